//! The admin audit query and report over the shipped streams of the
//! *other* replicas (this replica's own stream is read from its local
//! index, which has a record the moment it is written; the database has
//! the others' records once shipped, about a second later).
//!
//! Order is `(time, stream, seq)`: each stream's seq order is its time
//! order, and the stream breaks ties between replicas.

use deadpool_postgres::Pool;
use tokio_postgres::types::ToSql;

use super::ShipError;
use super::pg::{at, micros};
use crate::audit::Record;

/// A record's place in the merged order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Unix microseconds.
    pub micros: i64,
    /// Stream id.
    pub stream: String,
    /// Seq in the stream.
    pub seq: u64,
}

impl Position {
    /// The page cursor the admin API returns: `micros.stream.seq`.
    pub fn cursor(&self) -> String {
        format!("{}.{}.{}", self.micros, self.stream, self.seq)
    }

    /// Reads a cursor [`Position::cursor`] made.
    pub fn parse(cursor: &str) -> Option<Self> {
        let mut parts = cursor.splitn(3, '.');
        let micros = parts.next()?.parse().ok()?;
        let stream = parts.next()?.to_string();
        let seq = parts.next()?.parse().ok()?;
        (!stream.is_empty()).then_some(Self {
            micros,
            stream,
            seq,
        })
    }
}

/// What the query filters on (exact strings).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this tenant's records.
    pub tenant: Option<String>,
    /// Only this user's (or key's).
    pub user: Option<String>,
    /// Only this event type.
    pub event: Option<String>,
    /// From this time (Unix microseconds), inclusive.
    pub start_micros: Option<i64>,
    /// Until this time, inclusive.
    pub end_micros: Option<i64>,
    /// Only records after this position.
    pub after: Option<Position>,
}

/// Builds `WHERE …` for `filter` over every stream but `own`.
/// `after_seq` is `filter.after`'s seq as SQL's `int8`.
fn conditions<'a>(
    own: &'a &'a str,
    filter: &'a Filter,
    after_seq: &'a i64,
    params: &mut Vec<&'a (dyn ToSql + Sync)>,
) -> String {
    params.push(own);
    let mut sql = String::from("stream <> $1");
    let mut add = |sql: &mut String, cond: &str, p: &'a (dyn ToSql + Sync)| {
        params.push(p);
        sql.push_str(" AND ");
        sql.push_str(&cond.replace('?', &format!("${}", params.len())));
    };
    if let Some(t) = &filter.tenant {
        add(&mut sql, "tenant_id = ?", t);
    }
    if let Some(u) = &filter.user {
        add(&mut sql, "record->>'user_id' = ?", u);
    }
    if let Some(e) = &filter.event {
        add(&mut sql, "event_type = ?", e);
    }
    if let Some(s) = &filter.start_micros {
        add(&mut sql, &format!("at >= {}", at("?")), s);
    }
    if let Some(e) = &filter.end_micros {
        add(&mut sql, &format!("at <= {}", at("?")), e);
    }
    if let Some(after) = &filter.after {
        add(
            &mut sql,
            &format!("(at, stream, seq) > ({}, ", at("?")),
            &after.micros,
        );
        params.push(&after.stream);
        sql.push_str(&format!("${}::text, ", params.len()));
        params.push(after_seq);
        sql.push_str(&format!("${}::int8)", params.len()));
    }
    sql
}

/// Up to `limit` records of the other streams matching `filter`, in
/// `(time, stream, seq)` order, read from their exact lines.
pub async fn query(
    pool: &Pool,
    own: &str,
    filter: &Filter,
    limit: usize,
) -> Result<Vec<(Position, Record)>, ShipError> {
    let mut params = Vec::new();
    let after_seq = filter.after.as_ref().map_or(0, |a| a.seq as i64);
    let cond = conditions(&own, filter, &after_seq, &mut params);
    let limit = limit as i64;
    params.push(&limit);
    let sql = format!(
        "SELECT {}, stream, seq, line FROM audit_records WHERE {cond} ORDER BY at, stream, seq LIMIT ${}",
        micros("at"),
        params.len()
    );
    let client = pool.get().await?;
    let rows = client.query(&sql, &params).await?;
    rows.iter().map(row_record).collect()
}

fn row_record(row: &tokio_postgres::Row) -> Result<(Position, Record), ShipError> {
    let line: &str = row.get(3);
    let record: Record = serde_json::from_str(line)
        .map_err(|e| ShipError::Db(format!("a shipped audit record is unreadable: {e}")))?;
    Ok((
        Position {
            micros: row.get(0),
            stream: row.get(1),
            seq: row.get::<_, i64>(2) as u64,
        },
        record,
    ))
}

/// The report's share of the other streams: one tenant's records since a
/// time.
#[derive(Debug, Default)]
pub struct ReportPart {
    /// Records.
    pub total: u64,
    /// Per event type.
    pub events: Vec<(String, u64)>,
    /// Per user (or key).
    pub users: Vec<(String, u64)>,
    /// HIGH severity records.
    pub high: u64,
    /// The five latest HIGH ones, latest first.
    pub recent_high: Vec<(Position, Record)>,
}

/// [`ReportPart`] for `tenant` since `since_micros`, over every stream but
/// `own`.
pub async fn report(
    pool: &Pool,
    own: &str,
    tenant: &str,
    since_micros: i64,
) -> Result<ReportPart, ShipError> {
    let client = pool.get().await?;
    let since = format!("at >= {}", at("$3"));
    let scope = format!("stream <> $1 AND tenant_id = $2 AND {since}");
    let params: [&(dyn ToSql + Sync); 3] = [&own, &tenant, &since_micros];
    let counts =
        |by: &str| format!("SELECT {by}, count(*) FROM audit_records WHERE {scope} GROUP BY 1");
    let named = |rows: Vec<tokio_postgres::Row>| -> Vec<(String, u64)> {
        rows.iter()
            .map(|r| {
                (
                    r.get::<_, Option<String>>(0).unwrap_or_default(),
                    r.get::<_, i64>(1) as u64,
                )
            })
            .collect()
    };
    let events = named(client.query(&counts("event_type"), &params).await?);
    let users = named(client.query(&counts("record->>'user_id'"), &params).await?);
    let total = events.iter().map(|(_, n)| n).sum();
    let high_cond = format!("{scope} AND record->>'severity' = 'HIGH'");
    let high = client
        .query_one(
            &format!("SELECT count(*) FROM audit_records WHERE {high_cond}"),
            &params,
        )
        .await?
        .get::<_, i64>(0) as u64;
    let recent = client
        .query(
            &format!(
                "SELECT {}, stream, seq, line FROM audit_records WHERE {high_cond} \
                 ORDER BY at DESC, stream DESC, seq DESC LIMIT 5",
                micros("at")
            ),
            &params,
        )
        .await?;
    Ok(ReportPart {
        total,
        events,
        users,
        high,
        recent_high: recent.iter().map(row_record).collect::<Result<_, _>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cursor reads back as the position it was made from; anything
    /// else (a one-replica seq cursor, garbage) is refused.
    #[test]
    fn cursors_round_trip() {
        let p = Position {
            micros: 1_764_201_600_000_001,
            stream: "0a1b".into(),
            seq: 42,
        };
        assert_eq!(Position::parse(&p.cursor()), Some(p));
        for bad in ["42", "", "1..3", "x.s.1", "1.s.x"] {
            assert_eq!(Position::parse(bad), None, "{bad}");
        }
    }
}
