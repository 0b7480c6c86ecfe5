//! Times as people and scripts read them: RFC 3339 in UTC (`2026-12-07T18:40:00Z`).
//!
//! The API keeps its Unix-millisecond fields (`*_ms`, what programs compute with) and adds an
//! RFC 3339 twin next to each ([`with_rfc3339`]); `ctl` shows only the RFC 3339 form.
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

/// `body` as JSON with an RFC 3339 twin next to each millisecond time field.
pub fn timed_value(body: &impl serde::Serialize) -> Value {
    with_rfc3339(serde_json::to_value(body).unwrap_or(Value::Null))
}

/// `2026-12-07T18:40:00Z`: whole seconds, for times a person compares with a clock.
pub fn rfc3339(unix_ms: u64) -> String {
    format_utc(
        unix_ms,
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z"),
    )
}

/// `2026-12-07T18:40:00.123Z`: with milliseconds, for boot events a few ms apart.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    format_utc(
        unix_ms,
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"),
    )
}

/// `unix_ms` in UTC as `format` says. A time past the year 9999, which RFC 3339 cannot write
/// (and no clock or lease here reaches), is shown as its milliseconds rather than hidden.
fn format_utc(unix_ms: u64, format: &[BorrowedFormatItem<'_>]) -> String {
    i128::from(unix_ms)
        .checked_mul(1_000_000)
        .and_then(|ns| OffsetDateTime::from_unix_timestamp_nanos(ns).ok())
        .and_then(|at| at.format(format).ok())
        .unwrap_or_else(|| format!("{unix_ms}ms after the Unix epoch"))
}

/// Millisecond time fields of the API's answers and the name of their RFC 3339 twin.
pub(crate) const TIME_FIELDS: &[(&str, &str)] = &[
    ("at_ms", "at"),
    ("at_unix_ms", "at"),
    ("created_at_ms", "created_at"),
    ("expires_at_ms", "expires_at"),
    ("expires_ms", "expires_at"),
    ("first_unix_ms", "first_at"),
    ("last_unix_ms", "last_at"),
    ("started_at_ms", "started_at"),
    ("finished_at_ms", "finished_at"),
    ("registered_at_ms", "registered_at"),
    ("imported_at_ms", "imported_at"),
];

/// `value` with an RFC 3339 field next to every millisecond time field, in nested objects and
/// arrays too. An audit entry's `detail` is left as it was recorded: the entry's hash covers it.
pub fn with_rfc3339(mut value: Value) -> Value {
    add_rfc3339(&mut value);
    value
}

fn add_rfc3339(value: &mut Value) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(add_rfc3339),
        Value::Object(fields) => {
            let twins: Vec<(&str, String)> = TIME_FIELDS
                .iter()
                .filter_map(|(ms, twin)| Some((*twin, rfc3339_ms(fields.get(*ms)?.as_u64()?))))
                .collect();
            for (key, nested) in fields.iter_mut() {
                if key != "detail" {
                    add_rfc3339(nested);
                }
            }
            for (twin, text) in twins {
                fields.insert(twin.to_owned(), Value::String(text));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        // 2000-02-29 (a leap day of a century leap year) 12:34:56.789.
        assert_eq!(rfc3339_ms(951_827_696_789), "2000-02-29T12:34:56.789Z");
        assert_eq!(rfc3339(1_796_669_999_000), "2026-12-07T18:59:59Z");
        assert_eq!(rfc3339(4_107_542_400_000), "2100-03-01T00:00:00Z");
        assert_eq!(rfc3339_ms(1_000), "1970-01-01T00:00:01.000Z");
        assert_eq!(
            rfc3339(u64::MAX),
            "18446744073709551615ms after the Unix epoch"
        );
    }

    #[test]
    fn twins_are_added_beside_millisecond_fields_but_not_in_audit_details() {
        let out = with_rfc3339(json!([{
            "seq": 1, "at_ms": 0, "duration_ms": 5,
            "detail": { "registered_at_ms": 0 },
            "stages": [{ "first_unix_ms": 1000 }],
        }]));
        assert_eq!(
            out,
            json!([{
                "seq": 1, "at_ms": 0, "at": "1970-01-01T00:00:00.000Z", "duration_ms": 5,
                "detail": { "registered_at_ms": 0 },
                "stages": [{ "first_unix_ms": 1000, "first_at": "1970-01-01T00:00:01.000Z" }],
            }])
        );
    }
}
