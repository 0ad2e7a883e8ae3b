//! Reading this replica's records back from its files, from a seq on: the
//! shipper's only view of the log (it never touches the writer's state, so
//! a slow or absent database cannot slow the writer down).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use crate::audit::files::{file_name, files};

/// Where the next record to ship is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// `audit-NNNNNN.jsonl`'s number.
    pub(crate) file_no: u64,
    /// Byte offset of the next line in it.
    pub(crate) offset: u64,
    /// The seq expected next (a record after a jump is returned alone
    /// first, so a gap is always at a batch's start).
    pub(crate) next_seq: u64,
}

/// The fields of a record the shipper needs (the rest travels as the
/// line's text). Read without building the whole record: the shipper reads
/// back every record the proxy writes, so this is per request.
#[derive(Debug, Clone, serde::Deserialize)]
pub(crate) struct Shipped {
    /// Position in the chain.
    pub(crate) seq: u64,
    /// RFC 3339.
    pub(crate) timestamp: String,
    /// The event's type.
    pub(crate) event_type: String,
    /// The tenant (empty when none).
    pub(crate) tenant_id: String,
    /// The previous record's hash.
    pub(crate) prev_hash: String,
    /// This record's hash.
    pub(crate) hash: String,
}

/// One record as read back.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    /// What the shipper needs of it.
    pub(crate) record: Shipped,
    /// Its line, exactly as written (the bytes its hash covers).
    pub(crate) text: String,
    /// Its time, Unix microseconds.
    pub(crate) micros: i64,
}

fn first_seq(path: &Path) -> io::Result<Option<u64>> {
    let mut reader = BufReader::new(File::open(path)?.take(1 << 20));
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\n") {
        return Ok(None);
    }
    Ok(serde_json::from_slice::<Shipped>(&line).ok().map(|r| r.seq))
}

/// The position of record `next` (or of the first record after it, when
/// retention removed the files holding it) in the log in `dir`.
pub(crate) fn locate(dir: &Path, next: u64) -> io::Result<Cursor> {
    let files = files(dir)?;
    let Some(&(first_no, _)) = files.first() else {
        return Ok(Cursor {
            file_no: 1,
            offset: 0,
            next_seq: next,
        });
    };
    let mut chosen = first_no;
    for (no, path) in files.iter().rev() {
        if first_seq(path)?.is_some_and(|s| s <= next) {
            chosen = *no;
            break;
        }
    }
    // Skip the lines before `next` in that file.
    let mut cursor = Cursor {
        file_no: chosen,
        offset: 0,
        next_seq: next,
    };
    let file = File::open(dir.join(file_name(chosen)))?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || !line.ends_with(b"\n") {
            break;
        }
        let record: Shipped = serde_json::from_slice(&line).map_err(invalid)?;
        if record.seq >= next {
            break;
        }
        cursor.offset += n as u64;
    }
    Ok(cursor)
}

/// An RFC 3339 time as Unix microseconds (0 if unreadable, as the index does).
fn micros(timestamp: &str) -> i64 {
    time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1000) as i64)
        .unwrap_or(0)
}

fn invalid(e: serde_json::Error) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unreadable audit record: {e}"),
    )
}

/// Reads up to `max` records (and about `max_bytes`) from `cursor` on,
/// none after `upto` (the signed head's seq: only synced records leave
/// the replica), moving to the next file once the current one is
/// complete. Returns them and the cursor after them.
pub(crate) fn read_batch(
    dir: &Path,
    mut cursor: Cursor,
    upto: u64,
    max: usize,
    max_bytes: usize,
) -> io::Result<(Vec<Line>, Cursor)> {
    let mut out: Vec<Line> = Vec::new();
    let mut bytes = 0usize;
    'files: loop {
        // Checked before reading: once the next file exists, the writer
        // appends no more to this one, so reading it to its end now
        // reads all of it.
        let next_exists = dir.join(file_name(cursor.file_no + 1)).exists();
        let mut file = match File::open(dir.join(file_name(cursor.file_no))) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound && out.is_empty() && !next_exists => {
                // Nothing written yet.
                return Ok((out, cursor));
            }
            Err(e) => return Err(e),
        };
        file.seek(SeekFrom::Start(cursor.offset))?;
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        loop {
            if out.len() >= max || bytes >= max_bytes {
                break 'files;
            }
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || !line.ends_with(b"\n") {
                // The end of what is written (a line still being written
                // is left for the next turn).
                break;
            }
            let record: Shipped = serde_json::from_slice(&line).map_err(invalid)?;
            if record.seq > upto {
                break 'files;
            }
            if record.seq < cursor.next_seq {
                cursor.offset += n as u64;
                continue;
            }
            if record.seq != cursor.next_seq && !out.is_empty() {
                // A jump: it starts the next batch.
                break 'files;
            }
            line.pop();
            let text = String::from_utf8(std::mem::take(&mut line))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            cursor.offset += n as u64;
            cursor.next_seq = record.seq + 1;
            bytes += text.len();
            let micros = micros(&record.timestamp);
            out.push(Line {
                record,
                text,
                micros,
            });
        }
        if next_exists {
            cursor.file_no += 1;
            cursor.offset = 0;
        } else {
            break;
        }
    }
    Ok((out, cursor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::writer::{self, WriterConfig};
    use crate::audit::{Durability, Event, EventType};
    use std::time::Duration;

    /// Records come back in seq order across rotated files, never past
    /// `upto`, from wherever `locate` puts the cursor.
    #[tokio::test]
    async fn reads_records_across_files_up_to_the_head() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (audit, _w) = writer::start(
            WriterConfig {
                max_file_bytes: 2048,
                batch_interval: Duration::ZERO,
                ..WriterConfig::for_test(&dir, b"reader-test-key-0123456789")
            },
            None,
        )
        .unwrap();
        for i in 0..40 {
            let e = Event::new(EventType::AdminAction, serde_json::json!({ "i": i }));
            audit.record(e, Durability::Written).await.unwrap();
        }
        audit.flush().await.unwrap();
        assert!(files(&dir).unwrap().len() > 2);
        let cursor = locate(&dir, 7).unwrap();
        let (lines, cursor) = read_batch(&dir, cursor, 30, 10, 1 << 20).unwrap();
        let seqs: Vec<u64> = lines.iter().map(|l| l.record.seq).collect();
        assert_eq!(seqs, (7..17).collect::<Vec<_>>());
        let (lines, cursor) = read_batch(&dir, cursor, 30, 100, 1 << 20).unwrap();
        assert_eq!(lines.first().unwrap().record.seq, 17);
        assert_eq!(lines.last().unwrap().record.seq, 30);
        // The text is the record exactly as written: its hash recomputes.
        let last = lines.last().unwrap();
        let whole: crate::audit::Record = serde_json::from_str(&last.text).unwrap();
        assert_eq!(whole.compute_hash(), last.record.hash);
        assert_eq!(whole.prev_hash, last.record.prev_hash);
        assert_eq!(whole.timestamp, last.record.timestamp);
        let (lines, _) = read_batch(&dir, cursor, 40, 100, 1 << 20).unwrap();
        assert_eq!(lines.len(), 10);
        assert_eq!(locate(&dir, 41).unwrap().next_seq, 41);
    }
}
