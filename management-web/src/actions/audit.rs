//! The audit log's filters, as the API's `/api/v1/requests` and the pages' audit log and CSV
//! export take them: a tenant, a status or status class, a time range, paging.

use std::time::UNIX_EPOCH;

use relay_store::AuditFilter;
use serde::Deserialize;

use super::paging;
use crate::error::Error;

/// A status filter: one status (`502`) or a class (`5xx`).
pub(crate) const STATUS_PATTERN: &str = "^([1-5][0-9][0-9]|[1-5][xX][xX])$";

/// The filters as given (query parameters; empty means "any").
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestQuery {
    #[serde(default)]
    pub(crate) tenant: String,
    #[serde(default)]
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) since: String,
    #[serde(default)]
    pub(crate) until: String,
    pub(crate) limit: Option<u32>,
    #[serde(default)]
    pub(crate) offset: u64,
}

impl RequestQuery {
    /// The store filter these parameters describe, or [`Error::BadQuery`].
    pub(crate) fn filter(&self, default_limit: u32) -> Result<AuditFilter, Error> {
        let opt = |s: &str| {
            let s = s.trim();
            (!s.is_empty()).then(|| s.to_string())
        };
        let bad = Error::BadQuery;
        Ok(AuditFilter {
            tenant: opt(&self.tenant).map(|t| t.to_ascii_lowercase()),
            status: opt(&self.status)
                .map(|s| parse_status(&s))
                .transpose()
                .map_err(bad)?,
            since: opt(&self.since)
                .map(|s| parse_time(&s))
                .transpose()
                .map_err(bad)?,
            until: opt(&self.until)
                .map(|s| parse_time(&s))
                .transpose()
                .map_err(bad)?,
            limit: paging(self.limit, self.offset, default_limit)?,
            offset: self.offset,
        })
    }
}

/// A time given as ms since the epoch or RFC 3339.
pub(crate) fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(s)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .ok_or_else(|| format!("{s:?} is neither an RFC 3339 time nor ms since the epoch"))
}

/// A status filter: `502` or `5xx` ([`STATUS_PATTERN`]).
pub(crate) fn parse_status(s: &str) -> Result<(i64, i64), String> {
    let err = || format!("status {s:?}: give a status like 502 or a class like 5xx");
    let lower = s.to_ascii_lowercase();
    if lower.len() != 3 || !lower.bytes().all(|b| b.is_ascii_digit() || b == b'x') {
        return Err(err());
    }
    if let Some(d) = lower.strip_suffix("xx") {
        let class: i64 = d.parse().map_err(|_| err())?;
        return if (1..=5).contains(&class) {
            Ok((class * 100, class * 100 + 99))
        } else {
            Err(err())
        };
    }
    let code: i64 = lower.parse().map_err(|_| err())?;
    if (100..=599).contains(&code) {
        Ok((code, code))
    } else {
        Err(err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_filters() {
        assert_eq!(parse_status("5xx"), Ok((500, 599)));
        assert_eq!(parse_status("2XX"), Ok((200, 299)));
        assert_eq!(parse_status("502"), Ok((502, 502)));
        assert!(parse_status("6xx").is_err());
        assert!(parse_status("99").is_err());
        assert!(parse_status("abc").is_err());
        assert!(parse_status("+50").is_err());
        assert!(parse_status("5x2").is_err());
        assert!(parse_status("5000").is_err());
    }

    #[test]
    fn times_as_ms_or_rfc3339() {
        assert_eq!(parse_time("1000"), Ok(1000));
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Ok(1000));
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn filters_are_checked_and_canonical() {
        let q = RequestQuery {
            tenant: " Acme ".into(),
            status: "5xx".into(),
            since: "1000".into(),
            ..Default::default()
        };
        let f = q.filter(100).unwrap();
        assert_eq!(f.tenant.as_deref(), Some("acme"));
        assert_eq!(f.status, Some((500, 599)));
        assert_eq!(f.since, Some(1000));
        assert_eq!(f.limit, 100);
        for bad in [
            RequestQuery {
                status: "teapot".into(),
                ..Default::default()
            },
            RequestQuery {
                until: "yesterday".into(),
                ..Default::default()
            },
            RequestQuery {
                limit: Some(0),
                ..Default::default()
            },
        ] {
            assert!(
                matches!(bad.filter(100), Err(Error::BadQuery(_))),
                "{bad:?}"
            );
        }
    }
}
