//! A small metrics registry rendered in the Prometheus text exposition format (version 0.0.4).
//!
//! The data plane takes a [`Counter`], [`Gauge`] or [`Histogram`] handle once (registry lock) and
//! then updates it with atomic operations, so a worker core never waits on the registry.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// Label pairs, sorted by name so one series has one key whatever order the caller used.
type Labels = Vec<(String, String)>;

#[derive(Debug)]
struct Family {
    kind: MetricKind,
    help: String,
    series: BTreeMap<Labels, Series>,
}

#[derive(Debug, Clone)]
enum Series {
    /// A counter's total, or a gauge's `f64` bits.
    Scalar(Arc<AtomicU64>),
    Histogram(Arc<Buckets>),
}

/// A histogram's state: a count per bucket (not cumulative; the last is `+Inf`) and the sum.
#[derive(Debug)]
struct Buckets {
    /// Upper bounds, ascending, finite.
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    /// `f64` bits.
    sum: AtomicU64,
}

/// Observations counted into fixed buckets (Prometheus `histogram`: `_bucket{le=..}`, `_sum`,
/// `_count`), for quantiles over any window with `histogram_quantile`.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<Buckets>);

impl Histogram {
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

/// A monotonically increasing count.
#[derive(Debug, Clone)]
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

/// A value that goes up and down; stored as `f64` bits.
#[derive(Debug, Clone)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    #[error("metric name {0:?} is not [a-zA-Z_:][a-zA-Z0-9_:]*")]
    Name(String),
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

/// The registry. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    families: Arc<Mutex<BTreeMap<String, Family>>>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter `name{labels}`, created at zero on first use.
    pub fn counter(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
    ) -> Result<Counter, MetricsError> {
        self.series(name, help, labels, MetricKind::Counter, &[])
            .map(|s| match s {
                Series::Scalar(v) => Counter(v),
                Series::Histogram(_) => unreachable!("kind checked"),
            })
    }

    /// The gauge `name{labels}`, created at zero on first use.
    pub fn gauge(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
    ) -> Result<Gauge, MetricsError> {
        self.series(name, help, labels, MetricKind::Gauge, &[])
            .map(|s| match s {
                Series::Scalar(v) => Gauge(v),
                Series::Histogram(_) => unreachable!("kind checked"),
            })
    }

    /// The histogram `name{labels}` with upper bounds `buckets` (ascending; `+Inf` is added),
    /// created empty on first use. A series that exists keeps the buckets it was made with.
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
        self.series(name, help, labels, MetricKind::Histogram, buckets)
            .map(|s| match s {
                Series::Histogram(h) => Histogram(h),
                Series::Scalar(_) => unreachable!("kind checked"),
            })
    }

    /// Makes the family `name` exist (its HELP and TYPE rendered) before any series of it does,
    /// so a dashboard's query for reasons not seen yet finds the metric.
    pub fn declare(&self, name: &str, help: &str, kind: MetricKind) -> Result<(), MetricsError> {
        if !valid_name(name, true) {
            return Err(MetricsError::Name(name.to_owned()));
        }
        let mut families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let family = families.entry(name.to_owned()).or_insert_with(|| Family {
            kind,
            help: help.to_owned(),
            series: BTreeMap::new(),
        });
        if family.kind != kind {
            return Err(MetricsError::KindMismatch {
                name: name.to_owned(),
                registered: family.kind,
                requested: kind,
            });
        }
        Ok(())
    }

    fn series(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        kind: MetricKind,
        buckets: &[f64],
    ) -> Result<Series, MetricsError> {
        if !valid_name(name, true) {
            return Err(MetricsError::Name(name.to_owned()));
        }
        let mut key: Labels = Vec::with_capacity(labels.len());
        for (k, v) in labels {
            let reserved = kind == MetricKind::Histogram && *k == "le";
            if !valid_name(k, false) || k.starts_with("__") || reserved {
                return Err(MetricsError::LabelName((*k).to_owned()));
            }
            key.push(((*k).to_owned(), (*v).to_owned()));
        }
        key.sort();
        let mut families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let family = families.entry(name.to_owned()).or_insert_with(|| Family {
            kind,
            help: help.to_owned(),
            series: BTreeMap::new(),
        });
        if family.kind != kind {
            return Err(MetricsError::KindMismatch {
                name: name.to_owned(),
                registered: family.kind,
                requested: kind,
            });
        }
        let series = family.series.entry(key).or_insert_with(|| match kind {
            MetricKind::Histogram => Series::Histogram(Arc::new(Buckets {
                bounds: buckets.to_vec(),
                counts: (0..=buckets.len()).map(|_| AtomicU64::new(0)).collect(),
                sum: AtomicU64::new(0f64.to_bits()),
            })),
            MetricKind::Counter | MetricKind::Gauge => Series::Scalar(Arc::default()),
        });
        Ok(series.clone())
    }

    /// Every series in the Prometheus text format.
    pub fn render(&self) -> String {
        let families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (name, family) in families.iter() {
            let _ = writeln!(out, "# HELP {name} {}", escape(&family.help, false));
            let _ = writeln!(out, "# TYPE {name} {}", family.kind.as_str());
            for (labels, series) in &family.series {
                match series {
                    Series::Scalar(value) => {
                        write_series(&mut out, name, labels, None);
                        let bits = value.load(Ordering::Relaxed);
                        let _ = match family.kind {
                            MetricKind::Gauge => {
                                writeln!(out, " {}", format_float(f64::from_bits(bits)))
                            }
                            MetricKind::Counter | MetricKind::Histogram => {
                                writeln!(out, " {bits}")
                            }
                        };
                    }
                    Series::Histogram(h) => {
                        let bucket = format!("{name}_bucket");
                        let mut cumulative = 0;
                        for (i, count) in h.counts.iter().enumerate() {
                            cumulative += count.load(Ordering::Relaxed);
                            let le = h.bounds.get(i).map_or("+Inf".into(), |b| format_float(*b));
                            write_series(&mut out, &bucket, labels, Some(&le));
                            let _ = writeln!(out, " {cumulative}");
                        }
                        let sum = f64::from_bits(h.sum.load(Ordering::Relaxed));
                        write_series(&mut out, &format!("{name}_sum"), labels, None);
                        let _ = writeln!(out, " {}", format_float(sum));
                        write_series(&mut out, &format!("{name}_count"), labels, None);
                        let _ = writeln!(out, " {cumulative}");
                    }
                }
            }
        }
        out
    }
}

/// `name{labels,le="..."}` without the value.
fn write_series(out: &mut String, name: &str, labels: &Labels, le: Option<&str>) {
    out.push_str(name);
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape(v, true));
    }
    if let Some(le) = le {
        if !labels.is_empty() {
            out.push(',');
        }
        let _ = write!(out, "le=\"{le}\"");
    }
    out.push('}');
}

fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        v.to_string()
    }
}

fn valid_name(name: &str, colon: bool) -> bool {
    let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':');
    let mut chars = name.chars();
    chars.next().is_some_and(ok_first) && chars.all(|c| ok_first(c) || c.is_ascii_digit())
}

/// HELP text escapes `\` and newline; label values also escape `"`.
fn escape(s: &str, quote: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
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
        m.counter("odd", "x", &[("v", "a\"b\\c\nd")])
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
        assert!(text.contains(r#"odd{v="a\"b\\c\nd"} 1"#), "{text}");
        assert!(matches!(
            m.gauge("stampede_dhcp_drops_total", "", &[]),
            Err(MetricsError::KindMismatch { .. })
        ));
        assert!(m.counter("1bad", "", &[]).is_err());
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
