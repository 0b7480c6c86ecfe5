//! The metrics registry behind `/metrics`: prometheus-client's [`Registry`] and [`Family`], its
//! Prometheus text exposition (version 0.0.4), and our own series types.
//!
//! The series types ([`Counter`], [`Gauge`], [`Histogram`]) are plain atomics rather than
//! prometheus-client's own: the data plane publishes totals its workers keep (`set`), which the
//! crate's counter and histogram do not offer, and its histogram takes a lock per observation.
//! A caller takes a handle once (registry lock) and then updates it with atomic operations, so a
//! worker core never waits on the registry.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Label pairs, sorted by name so one series has one key whatever order the caller used.
type Labels = Vec<(String, String)>;

/// A histogram's state: a count per bucket (not cumulative; the last is `+Inf`) and the sum.
#[derive(Debug)]
struct Buckets {
    /// Upper bounds, ascending, finite.
    bounds: Arc<[f64]>,
    counts: Vec<AtomicU64>,
    /// `f64` bits.
    sum: AtomicU64,
}

/// Observations counted into fixed buckets (Prometheus `histogram`: `_bucket{le=..}`, `_sum`,
/// `_count`), for quantiles over any window with `histogram_quantile`.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<Buckets>);

impl Histogram {
    fn with_bounds(bounds: Arc<[f64]>) -> Self {
        Self(Arc::new(Buckets {
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            bounds,
            sum: AtomicU64::new(0f64.to_bits()),
        }))
    }

    pub fn observe(&self, v: f64) {
        let b = &self.0;
        let at = b.bounds.partition_point(|bound| *bound < v);
        b.counts[at].fetch_add(1, Ordering::Relaxed);
        let _ = b
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    /// Sets the totals, for histograms kept elsewhere and published here: `counts` per bucket
    /// (not cumulative, one more than the bounds: the last is `+Inf`); extra or missing entries
    /// are ignored.
    pub fn set(&self, counts: &[u64], sum: f64) {
        for (slot, n) in self.0.counts.iter().zip(counts) {
            slot.store(*n, Ordering::Relaxed);
        }
        self.0.sum.store(sum.to_bits(), Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub fn sum(&self) -> f64 {
        f64::from_bits(self.0.sum.load(Ordering::Relaxed))
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The finite buckets, not cumulative (the encoder adds them up); `+Inf` is the count.
        let buckets: Vec<(f64, u64)> = self
            .0
            .bounds
            .iter()
            .zip(&self.0.counts)
            .map(|(bound, n)| (*bound, n.load(Ordering::Relaxed)))
            .collect();
        encoder.encode_histogram::<NoLabelSet>(self.sum(), self.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A histogram family's bucket bounds, fixed by its first series (or by the first
/// [`Metrics::histogram`] after a [`Metrics::declare`]); every series of a family shares them, as
/// `histogram_quantile` over the family needs.
#[derive(Debug, Clone, Default)]
struct HistogramBounds(Arc<OnceLock<Arc<[f64]>>>);

impl MetricConstructor<Histogram> for HistogramBounds {
    fn new_metric(&self) -> Histogram {
        Histogram::with_bounds(self.0.get().cloned().unwrap_or_else(|| Arc::from([])))
    }
}

/// A monotonically increasing count.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Sets the running total, for counts kept elsewhere and published here (the data plane's
    /// workers count without touching shared memory; their totals are copied in periodically).
    pub fn set(&self, total: u64) {
        self.0.store(total, Ordering::Relaxed);
    }
}

impl TypedMetric for Counter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Counter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A value that goes up and down; stored as `f64` bits.
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

impl TypedMetric for Gauge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for Gauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Whole values (counts, sizes, `build_info`'s 1) are written as integers, as the other
        // Prometheus clients write them and as dashboards and tests read them; the rest as floats.
        const EXACT: f64 = (1u64 << 53) as f64;
        let v = self.get();
        if v.fract() == 0.0 && v.abs() < EXACT {
            encoder.encode_gauge(&(v as i64))
        } else {
            encoder.encode_gauge(&v)
        }
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A family in the registry. prometheus-client leaves a family with no series out of the
/// exposition; ours keep their HELP and TYPE from the start, so a dashboard's query for a reason
/// not seen yet finds the metric ([`Metrics::declare`]).
#[derive(Debug)]
struct Declared<M, C = fn() -> M>(Family<Labels, M, C>);

impl<M, C> EncodeMetric for Declared<M, C>
where
    M: EncodeMetric + TypedMetric,
    C: MetricConstructor<M>,
{
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

/// A registered family, by kind: the handle that makes its series.
#[derive(Debug, Clone)]
enum FamilyHandle {
    Counter(Family<Labels, Counter>),
    Gauge(Family<Labels, Gauge>),
    Histogram(Family<Labels, Histogram, HistogramBounds>, HistogramBounds),
}

impl FamilyHandle {
    fn kind(&self) -> MetricKind {
        match self {
            Self::Counter(_) => MetricKind::Counter,
            Self::Gauge(_) => MetricKind::Gauge,
            Self::Histogram(..) => MetricKind::Histogram,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    #[error("metric name {0:?} is not [a-zA-Z_:][a-zA-Z0-9_:]*")]
    Name(String),
    #[error("counter name {0:?} does not end in _total")]
    CounterSuffix(String),
    #[error("label name {0:?} is not [a-zA-Z_][a-zA-Z0-9_]*")]
    LabelName(String),
    #[error("histogram {0} needs ascending finite bucket bounds")]
    Buckets(String),
    #[error("metric {name} is a {registered:?}, not a {requested:?}")]
    KindMismatch {
        name: String,
        registered: MetricKind,
        requested: MetricKind,
    },
}

#[derive(Debug, Default)]
struct Inner {
    registry: Registry,
    /// Each registered family by its full name, to find it again (the registry only encodes).
    families: HashMap<String, FamilyHandle>,
}

/// The registry. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter `name{labels}`, created at zero on first use. `name` ends in `_total`.
    pub fn counter(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
    ) -> Result<Counter, MetricsError> {
        let key = label_key(labels, MetricKind::Counter)?;
        match self.family(name, help, MetricKind::Counter)? {
            FamilyHandle::Counter(f) => Ok(f.get_or_create_owned(&key)),
            other => Err(mismatch(name, &other, MetricKind::Counter)),
        }
    }

    /// The gauge `name{labels}`, created at zero on first use.
    pub fn gauge(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
    ) -> Result<Gauge, MetricsError> {
        let key = label_key(labels, MetricKind::Gauge)?;
        match self.family(name, help, MetricKind::Gauge)? {
            FamilyHandle::Gauge(f) => Ok(f.get_or_create_owned(&key)),
            other => Err(mismatch(name, &other, MetricKind::Gauge)),
        }
    }

    /// The histogram `name{labels}` with upper bounds `buckets` (ascending; `+Inf` is added),
    /// created empty on first use. A family keeps the buckets its first series was made with.
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        buckets: &[f64],
    ) -> Result<Histogram, MetricsError> {
        if buckets.iter().any(|b| !b.is_finite()) || !buckets.is_sorted_by(|a, b| a < b) {
            return Err(MetricsError::Buckets(name.to_owned()));
        }
        let key = label_key(labels, MetricKind::Histogram)?;
        match self.family(name, help, MetricKind::Histogram)? {
            FamilyHandle::Histogram(f, bounds) => {
                bounds.0.get_or_init(|| Arc::from(buckets));
                Ok(f.get_or_create_owned(&key))
            }
            other => Err(mismatch(name, &other, MetricKind::Histogram)),
        }
    }

    /// Makes the family `name` exist (its HELP and TYPE rendered) before any series of it does,
    /// so a dashboard's query for reasons not seen yet finds the metric.
    pub fn declare(&self, name: &str, help: &str, kind: MetricKind) -> Result<(), MetricsError> {
        self.family(name, help, kind).map(drop)
    }

    /// The family `name`, registered on first use; an error if it exists as another kind.
    fn family(
        &self,
        name: &str,
        help: &str,
        kind: MetricKind,
    ) -> Result<FamilyHandle, MetricsError> {
        if !valid_name(name, true) {
            return Err(MetricsError::Name(name.to_owned()));
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(family) = inner.families.get(name) {
            if family.kind() != kind {
                return Err(mismatch(name, family, kind));
            }
            return Ok(family.clone());
        }
        let registry = &mut inner.registry;
        let family = match kind {
            // The encoder appends `_total` to a counter's name, as the format asks.
            MetricKind::Counter => match name.strip_suffix("_total") {
                Some(stem) => {
                    FamilyHandle::Counter(register(registry, stem, help, Family::default()))
                }
                None => return Err(MetricsError::CounterSuffix(name.to_owned())),
            },
            MetricKind::Gauge => {
                FamilyHandle::Gauge(register(registry, name, help, Family::default()))
            }
            MetricKind::Histogram => {
                let bounds = HistogramBounds::default();
                let family = Family::new_with_constructor(bounds.clone());
                FamilyHandle::Histogram(register(registry, name, help, family), bounds)
            }
        };
        inner.families.insert(name.to_owned(), family.clone());
        Ok(family)
    }

    /// Every series in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        // Writing to a `String` cannot fail, and our series encode infallibly.
        let _ = prometheus_text::encode(&mut out, &inner.registry);
        out
    }
}

/// `family` registered for exposition; the handle returned makes its series.
fn register<M, C>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    family: Family<Labels, M, C>,
) -> Family<Labels, M, C>
where
    Family<Labels, M, C>: Clone,
    Declared<M, C>: prometheus_client::registry::Metric,
{
    registry.register(name, help, Declared(family.clone()));
    family
}

fn mismatch(name: &str, family: &FamilyHandle, requested: MetricKind) -> MetricsError {
    MetricsError::KindMismatch {
        name: name.to_owned(),
        registered: family.kind(),
        requested,
    }
}

/// `labels` checked and sorted into a series key.
fn label_key(labels: &[(&str, &str)], kind: MetricKind) -> Result<Labels, MetricsError> {
    let mut key: Labels = Vec::with_capacity(labels.len());
    for (k, v) in labels {
        let reserved = kind == MetricKind::Histogram && *k == "le";
        if !valid_name(k, false) || k.starts_with("__") || reserved {
            return Err(MetricsError::LabelName((*k).to_owned()));
        }
        key.push(((*k).to_owned(), (*v).to_owned()));
    }
    key.sort();
    Ok(key)
}

fn valid_name(name: &str, colon: bool) -> bool {
    let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':');
    let mut chars = name.chars();
    chars.next().is_some_and(ok_first) && chars.all(|c| ok_first(c) || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format() {
        let m = Metrics::new();
        let drops = m
            .counter(
                "stampede_dhcp_drops_total",
                "DHCP datagrams dropped",
                &[("reason", "malformed"), ("core", "0")],
            )
            .expect("valid counter");
        drops.add(3);
        // Same series whatever the label order.
        m.counter(
            "stampede_dhcp_drops_total",
            "",
            &[("core", "0"), ("reason", "malformed")],
        )
        .expect("same series")
        .inc();
        m.gauge("stampede_leases", "Bound leases", &[])
            .expect("valid gauge")
            .set(12.5);
        m.counter("odd_total", "x", &[("v", "a\"b\\c\nd")])
            .expect("valid")
            .inc();
        let text = m.render();
        assert!(
            text.contains("# TYPE stampede_dhcp_drops_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("stampede_dhcp_drops_total{core=\"0\",reason=\"malformed\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("stampede_leases 12.5\n"), "{text}");
        assert!(text.contains(r#"odd_total{v="a\"b\\c\nd"} 1"#), "{text}");
        assert!(matches!(
            m.gauge("stampede_dhcp_drops_total", "", &[]),
            Err(MetricsError::KindMismatch { .. })
        ));
        assert!(m.counter("1bad", "", &[]).is_err());
        assert_eq!(
            m.counter("stampede_unsuffixed", "", &[]).err(),
            Some(MetricsError::CounterSuffix("stampede_unsuffixed".into()))
        );
        m.declare(
            "stampede_refused_total",
            "Refused, by reason",
            MetricKind::Counter,
        )
        .expect("valid");
        let text = m.render();
        assert!(
            text.contains("# TYPE stampede_refused_total counter\n"),
            "{text}"
        );
        // Declared, with its HELP and TYPE, but no sample yet.
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("stampede_refused_total")),
            "{text}"
        );
    }

    #[test]
    fn renders_histograms() {
        let m = Metrics::new();
        let h = m
            .histogram(
                "stampede_tftp_transfer_seconds",
                "TFTP transfers",
                &[("stage", "tftp")],
                &[0.1, 1.0],
            )
            .expect("valid histogram");
        h.observe(0.05);
        h.observe(0.1);
        h.observe(0.5);
        h.observe(7.0);
        assert_eq!(h.count(), 4);
        let text = m.render();
        for line in [
            "# TYPE stampede_tftp_transfer_seconds histogram\n",
            "stampede_tftp_transfer_seconds_bucket{stage=\"tftp\",le=\"0.1\"} 2\n",
            "stampede_tftp_transfer_seconds_bucket{stage=\"tftp\",le=\"1\"} 3\n",
            "stampede_tftp_transfer_seconds_bucket{stage=\"tftp\",le=\"+Inf\"} 4\n",
            "stampede_tftp_transfer_seconds_sum{stage=\"tftp\"} 7.65\n",
            "stampede_tftp_transfer_seconds_count{stage=\"tftp\"} 4\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        let published = m
            .histogram("published_seconds", "", &[], &[1.0])
            .expect("valid");
        published.set(&[3, 1], 4.5);
        let text = m.render();
        assert!(
            text.contains("published_seconds_bucket{le=\"1\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("published_seconds_count 4\n"), "{text}");
        assert!(m.histogram("bad", "", &[], &[1.0, 0.5]).is_err());
        assert!(m.histogram("bad2", "", &[("le", "x")], &[1.0]).is_err());
        assert!(matches!(
            m.counter("published_seconds", "", &[]),
            Err(MetricsError::KindMismatch { .. })
        ));
    }
}
