//! The record format of the journal and the replay ledger: one JSON value per line, framed by
//! a checksum, `JSON<TAB>sk1:<16 hex of SHA-256(JSON)>`, appended to a file whose torn last
//! line (a crash mid-write) is ended before the next record, every append fsync'd (and the
//! directory, when the file is new).
//!
//! Reading never stops early: a line that is torn, corrupted (its checksum does not match),
//! not UTF-8 or not a record is skipped and counted; every other line is read, whatever
//! comes before or after it. Lines without a checksum (written before the format had one)
//! are read as they are.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

const TAG: &str = "\tsk1:";

fn checksum(json: &[u8]) -> String {
    Sha256::digest(json)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One framed line (with its newline).
pub fn encode<T: Serialize>(record: &T) -> std::io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    let sum = checksum(&line);
    line.extend_from_slice(TAG.as_bytes());
    line.extend_from_slice(sum.as_bytes());
    line.push(b'\n');
    Ok(line)
}

/// Every record of `bytes`, and how many lines were skipped (torn, corrupted, not ours).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> (Vec<T>, usize) {
    let mut out = Vec::new();
    let mut bad = 0;
    for line in bytes.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let json = match find(line, TAG.as_bytes()) {
            Some(at) => {
                let (json, rest) = line.split_at(at);
                let sum = &rest[TAG.len()..];
                if sum != checksum(json).as_bytes() {
                    bad += 1;
                    continue;
                }
                json
            }
            None => line,
        };
        match serde_json::from_slice::<T>(json) {
            Ok(r) => out.push(r),
            Err(_) => bad += 1,
        }
    }
    (out, bad)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// Read a whole record file: `Ok(None)` when it does not exist.
pub fn read<T: DeserializeOwned>(path: &Path) -> std::io::Result<Option<(Vec<T>, usize)>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(decode(&bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Open a record file for appending (creating it and its directory), ending a torn last line
/// first, so that the next record starts on a line of its own and is never swallowed by the
/// torn one. A new file's directory entry is made durable too.
pub fn open_append(path: &Path) -> std::io::Result<File> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let created = !path.exists();
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    if created {
        File::open(dir)?.sync_all()?;
    }
    let len = file.metadata()?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1))?;
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
            file.sync_data()?;
        }
    }
    Ok(file)
}

/// Append one record and make it durable before returning.
pub fn append<T: Serialize>(file: &mut File, record: &T) -> std::io::Result<()> {
    file.write_all(&encode(record)?)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct R {
        n: u32,
        s: String,
    }

    fn r(n: u32) -> R {
        R {
            n,
            s: format!("record {n}"),
        }
    }

    #[test]
    fn torn_corrupted_and_foreign_lines_are_skipped_never_the_records_around_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/records.jsonl");
        let mut f = open_append(&path).unwrap();
        append(&mut f, &r(1)).unwrap();
        // a torn record (crash mid-write): no newline
        f.write_all(&encode(&r(99)).unwrap()[..10]).unwrap();
        drop(f);
        // reopening ends the torn line: the next record is whole
        let mut f = open_append(&path).unwrap();
        append(&mut f, &r(2)).unwrap();
        // a record whose content changed after it was written (a flipped digit): the
        // checksum catches what JSON alone would read as another valid record
        let mut flipped = encode(&r(3)).unwrap();
        let at = flipped.iter().position(|&b| b == b'3').unwrap();
        flipped[at] = b'7';
        f.write_all(&flipped).unwrap();
        // invalid UTF-8 and a line that is not ours
        f.write_all(b"\xff\xfe garbage\n").unwrap();
        f.write_all(b"{\"other\": true}\n").unwrap();
        append(&mut f, &r(4)).unwrap();
        // a record written before the format had a checksum is still read
        f.write_all(b"{\"n\":5,\"s\":\"legacy\"}\n").unwrap();
        drop(f);
        let (got, bad): (Vec<R>, usize) = read(&path).unwrap().unwrap();
        assert_eq!(
            got.iter().map(|r| r.n).collect::<Vec<_>>(),
            vec![1, 2, 4, 5]
        );
        assert_eq!(bad, 4, "torn, flipped, not UTF-8, not ours");
        assert!(read::<R>(&dir.path().join("missing")).unwrap().is_none());
    }

    #[test]
    fn interleaved_writers_never_merge_records() {
        // two handles appending to one file (two processes): O_APPEND writes of whole lines
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let mut a = open_append(&path).unwrap();
        let mut b = open_append(&path).unwrap();
        for n in 0..50 {
            append(if n % 2 == 0 { &mut a } else { &mut b }, &r(n)).unwrap();
        }
        let (got, bad): (Vec<R>, usize) = read(&path).unwrap().unwrap();
        assert_eq!(bad, 0);
        assert_eq!(got.len(), 50);
    }
}
