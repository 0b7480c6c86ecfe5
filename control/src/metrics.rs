//! A small metrics registry rendered in the Prometheus text exposition format (version 0.0.4).
//!
//! The data plane takes a [`Counter`] or [`Gauge`] handle once (registry lock) and then updates
//! it with one atomic operation per event, so a worker core never waits on the registry.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
        }
    }
}

/// Label pairs, sorted by name so one series has one key whatever order the caller used.
type Labels = Vec<(String, String)>;

#[derive(Debug)]
struct Family {
    kind: MetricKind,
    help: String,
    series: BTreeMap<Labels, Arc<AtomicU64>>,
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
        self.series(name, help, labels, MetricKind::Counter)
            .map(Counter)
    }

    /// The gauge `name{labels}`, created at zero on first use.
    pub fn gauge(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
    ) -> Result<Gauge, MetricsError> {
        self.series(name, help, labels, MetricKind::Gauge)
            .map(Gauge)
    }

    fn series(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        kind: MetricKind,
    ) -> Result<Arc<AtomicU64>, MetricsError> {
        if !valid_name(name, true) {
            return Err(MetricsError::Name(name.to_owned()));
        }
        let mut key: Labels = Vec::with_capacity(labels.len());
        for (k, v) in labels {
            if !valid_name(k, false) || k.starts_with("__") {
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
        Ok(family.series.entry(key).or_default().clone())
    }

    /// Every series in the Prometheus text format.
    pub fn render(&self) -> String {
        let families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (name, family) in families.iter() {
            let _ = writeln!(out, "# HELP {name} {}", escape(&family.help, false));
            let _ = writeln!(out, "# TYPE {name} {}", family.kind.as_str());
            for (labels, value) in &family.series {
                out.push_str(name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape(v, true));
                    }
                    out.push('}');
                }
                let bits = value.load(Ordering::Relaxed);
                let _ = match family.kind {
                    MetricKind::Counter => writeln!(out, " {bits}"),
                    MetricKind::Gauge => writeln!(out, " {}", format_float(f64::from_bits(bits))),
                };
            }
        }
        out
    }
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
    }
}
