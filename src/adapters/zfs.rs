//! ZFS adapter: argv builders and parsers for the one listing spoolkeeper takes per node.
//!
//! Pure functions only: the transport runs the argv, these turn bytes into the observed model.
//! The listing is `zfs get -Hp -r -o name,property,value <props> <datasets…>`, which both
//! zfs-fuse and OpenZFS print identically (tab separated, exact numbers, `-` where a property
//! does not apply). The parser streams: it never holds the whole text, only the model.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use jiff::Timestamp;
use thiserror::Error;

use crate::model::{Dataset, DatasetKind, Snapshot, ZfsCapabilities, ZfsFlavour};

/// The user-property namespace spoolkeeper owns.
pub const USER_NAMESPACE: &str = "spoolkeeper:";

/// Properties every listing asks for (both flavours have them).
pub const BASE_PROPERTIES: &[&str] = &[
    "type",
    "creation",
    "guid",
    "used",
    "userrefs",
    "readonly",
    "mounted",
    "mountpoint",
    "createtxg",
];

/// Errors from parsing ZFS output.
#[derive(Debug, Error)]
pub enum ZfsError {
    /// A line did not have the expected shape.
    #[error(
        "zfs output line {line}: {reason}; was the listing produced by `zfs get -Hp -o name,property,value`?"
    )]
    Malformed {
        /// 1-based line number.
        line: u64,
        /// What was wrong.
        reason: String,
    },
    /// Reading the stream failed.
    #[error("reading zfs output: {0}")]
    Io(#[from] std::io::Error),
}

/// The property list for the listing on a host with these capabilities: the base set,
/// `receive_resume_token` where it exists (zfs-fuse rejects the whole command otherwise),
/// the user properties and any extra property asked for, without duplicates.
pub fn listing_properties(
    caps: Option<&ZfsCapabilities>,
    user_properties: &[&str],
    extra: &[&str],
) -> Vec<String> {
    let mut out: Vec<String> = BASE_PROPERTIES.iter().map(|s| s.to_string()).collect();
    if caps.is_some_and(|c| c.resume_tokens) {
        out.push("receive_resume_token".into());
    }
    // `written` (bytes written since the previous snapshot): what tells a copy that never
    // served from a diverged one. OpenZFS has it; zfs-fuse rejects the whole command.
    if caps.is_some_and(|c| c.flavour == crate::model::ZfsFlavour::OpenZfs) {
        out.push("written".into());
    }
    for p in user_properties.iter().chain(extra) {
        if !out.iter().any(|o| o == p) {
            out.push((*p).to_string());
        }
    }
    out
}

/// `zfs hold` failed because the tag is already on the snapshot (the wanted state).
pub fn hold_exists(stderr: &str) -> bool {
    stderr.to_ascii_lowercase().contains("tag already exists")
}

/// `zfs release` failed because the tag is not on the snapshot (the wanted state).
pub fn hold_missing(stderr: &str) -> bool {
    stderr.to_ascii_lowercase().contains("no such tag")
}

/// `zfs version` (OpenZFS 0.8+; fails on zfs-fuse and older ZFS).
pub fn version_argv() -> Vec<String> {
    vec!["zfs".into(), "version".into()]
}

/// `zfs` alone: its usage text (on stderr) names the subcommands and flags this ZFS has.
pub fn usage_argv() -> Vec<String> {
    vec!["zfs".into()]
}

/// `zfs get -Hp -r -o name,property,value <props> <datasets…>`.
pub fn listing_argv(properties: &[String], datasets: &[String]) -> Vec<String> {
    let mut argv: Vec<String> = ["zfs", "get", "-Hp", "-r", "-o", "name,property,value"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    argv.push(properties.join(","));
    argv.extend(datasets.iter().cloned());
    argv
}

/// Datasets named in `cannot open 'X': dataset does not exist` lines of `zfs get` stderr.
/// `zfs get` on several datasets lists those that exist and exits 1; these are the absent ones.
pub fn missing_datasets(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.contains("dataset does not exist"))
        .filter_map(|l| {
            let start = l.find('\'')? + 1;
            let end = start + l[start..].find('\'')?;
            Some(l[start..end].to_string())
        })
        .collect()
}

/// True when every stderr line of a failed `zfs get` is a missing-dataset line, i.e. the
/// listing that was printed is complete for the datasets that exist.
pub fn only_missing_datasets(stderr: &str) -> bool {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .all(|l| l.contains("dataset does not exist"))
}

/// Stream-parse a `zfs get -Hp -r -o name,property,value` listing.
pub fn parse_listing<R: Read>(reader: R) -> Result<Vec<Dataset>, ZfsError> {
    let mut parser = ListingParser::default();
    for_each_record(reader, |no, name, prop, value| {
        parser.record(no, name, prop, value)
    })?;
    parser.finish()
}

/// Parse a listing already in memory.
pub fn parse_listing_bytes(bytes: &[u8]) -> Result<Vec<Dataset>, ZfsError> {
    parse_listing(bytes)
}

/// Call `f(line_no, name, property, value)` for each `name<TAB>property<TAB>value` line of a
/// stream. One pass over the bytes: the two tabs and the newline are searched in sequence, so
/// each byte is looked at once, and nothing is copied except a line straddling two reads.
/// Empty lines are skipped; a line without two tabs is an error.
pub fn for_each_record<R: Read, F>(mut reader: R, mut f: F) -> Result<(), ZfsError>
where
    F: FnMut(u64, &[u8], &[u8], &[u8]) -> Result<(), ZfsError>,
{
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    let mut start = 0usize;
    let mut end = 0usize;
    let mut no = 0u64;
    let mut eof = false;
    // The previous line's name: listings repeat a name once per property, so checking for it
    // first is a short memcmp instead of a byte scan.
    let mut prev: Vec<u8> = Vec::with_capacity(256);
    loop {
        // Parse every complete line in buf[start..end].
        loop {
            let avail = &buf[start..end];
            let plen = prev.len();
            let d1 = if plen > 0
                && avail.len() > plen
                && avail[plen] == b'\t'
                && avail[..plen] == prev[..]
            {
                plen
            } else {
                let Some(d1) = find_either(b'\t', b'\n', avail) else {
                    break;
                };
                if avail[d1] == b'\t' {
                    prev.clear();
                    prev.extend_from_slice(&avail[..d1]);
                }
                d1
            };
            if avail[d1] == b'\n' {
                no += 1;
                if d1 != 0 {
                    return Err(malformed(no, "no tab"));
                }
                start += 1;
                continue;
            }
            let Some(d2) = find_either(b'\t', b'\n', &avail[d1 + 1..]).map(|i| i + d1 + 1) else {
                break;
            };
            if avail[d2] == b'\n' {
                return Err(malformed(no + 1, "only one tab"));
            }
            let Some(nl) = find_byte(b'\n', &avail[d2 + 1..]).map(|i| i + d2 + 1) else {
                break;
            };
            no += 1;
            f(no, &avail[..d1], &avail[d1 + 1..d2], &avail[d2 + 1..nl])?;
            start += nl + 1;
        }
        if eof {
            if start < end {
                // Last line without a newline.
                let avail = &buf[start..end];
                no += 1;
                let d1 = find_byte(b'\t', avail).ok_or_else(|| malformed(no, "no tab"))?;
                let rest = &avail[d1 + 1..];
                let d2 = find_byte(b'\t', rest).ok_or_else(|| malformed(no, "only one tab"))?;
                f(no, &avail[..d1], &rest[..d2], &rest[d2 + 1..])?;
            }
            return Ok(());
        }
        // Make room: move the partial line to the front, grow if it fills the buffer.
        if start > 0 {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        if end == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        loop {
            match reader.read(&mut buf[end..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    end += n;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Call `f` for each line (without `\n`, 1-based number) of a stream, reading in large
/// chunks and never copying a line except when it straddles two chunks.
pub fn for_each_line<R: Read, F>(mut reader: R, mut f: F) -> Result<(), ZfsError>
where
    F: FnMut(u64, &[u8]) -> Result<(), ZfsError>,
{
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    let mut start = 0usize; // first unconsumed byte
    let mut end = 0usize; // end of valid data
    let mut line_no = 0u64;
    loop {
        if start > 0 && start == end {
            start = 0;
            end = 0;
        }
        if end == buf.len() {
            if start > 0 {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            } else {
                // A single line longer than the buffer: grow.
                buf.resize(buf.len() * 2, 0);
            }
        }
        let n = match reader.read(&mut buf[end..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            if start < end {
                line_no += 1;
                f(line_no, &buf[start..end])?;
            }
            return Ok(());
        }
        let scan_from = end;
        end += n;
        let mut pos = scan_from;
        while let Some(i) = find_byte(b'\n', &buf[pos..end]) {
            let nl = pos + i;
            line_no += 1;
            f(line_no, &buf[start..nl])?;
            start = nl + 1;
            pos = start;
        }
    }
}

/// Position of `needle` in `hay`, scanning a word at a time (no dependency on `memchr`).
#[inline]
pub fn find_byte(needle: u8, hay: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let rep = LO.wrapping_mul(needle as u64);
    let mut i = 0;
    let (chunks, _) = hay.as_chunks::<8>();
    for c in chunks {
        let w = u64::from_le_bytes(*c) ^ rep;
        let z = w.wrapping_sub(LO) & !w & HI;
        if z != 0 {
            return Some(i + (z.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    hay[i..].iter().position(|&b| b == needle).map(|p| p + i)
}

/// Position of the first `a` or `b` in `hay`, a word at a time.
#[inline]
pub fn find_either(a: u8, b: u8, hay: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let ra = LO.wrapping_mul(a as u64);
    let rb = LO.wrapping_mul(b as u64);
    let mut i = 0;
    let (chunks, _) = hay.as_chunks::<8>();
    for c in chunks {
        let w = u64::from_le_bytes(*c);
        let xa = w ^ ra;
        let xb = w ^ rb;
        let z = (xa.wrapping_sub(LO) & !xa | xb.wrapping_sub(LO) & !xb) & HI;
        if z != 0 {
            return Some(i + (z.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    hay[i..]
        .iter()
        .position(|&x| x == a || x == b)
        .map(|p| p + i)
}

/// Which object the current run of lines describes.
#[derive(Default)]
enum Current {
    #[default]
    None,
    Dataset(Dataset),
    Snapshot(SnapAcc),
}

#[derive(Default)]
struct SnapAcc {
    /// Index of the parent dataset in `datasets`.
    parent: usize,
    name: String,
    guid: Option<u64>,
    creation: Option<Timestamp>,
    createtxg: Option<u64>,
    userrefs: u32,
    used: u64,
    written: Option<u64>,
    first_line: u64,
}

#[derive(Default)]
struct ListingParser {
    datasets: Vec<Dataset>,
    index: HashMap<String, usize>,
    /// The full name of the object being accumulated (`pool/ds` or `pool/ds@snap`).
    cur_name: Vec<u8>,
    cur: Current,
}

fn malformed(line: u64, reason: impl Into<String>) -> ZfsError {
    ZfsError::Malformed {
        line,
        reason: reason.into(),
    }
}

fn parse_u64(line: u64, prop: &str, v: &[u8]) -> Result<Option<u64>, ZfsError> {
    if v == b"-" {
        return Ok(None);
    }
    if v.is_empty() || v.len() > 20 {
        return Err(malformed(line, format!("{prop}: not a number")));
    }
    if v.len() <= 19 {
        // Cannot overflow: 10^19 - 1 < u64::MAX.
        let mut n: u64 = 0;
        let mut ok = true;
        for &b in v {
            let d = b.wrapping_sub(b'0');
            ok &= d < 10;
            n = n.wrapping_mul(10).wrapping_add(u64::from(d));
        }
        if ok {
            return Ok(Some(n));
        }
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return Err(malformed(
                line,
                format!(
                    "{prop}: {:?} is not an exact number (use -p)",
                    String::from_utf8_lossy(v)
                ),
            ));
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or_else(|| malformed(line, format!("{prop}: number too large")))?;
    }
    Ok(Some(n))
}

fn parse_time(line: u64, v: &[u8]) -> Result<Option<Timestamp>, ZfsError> {
    match parse_u64(line, "creation", v)? {
        None => Ok(None),
        Some(s) => {
            let s = i64::try_from(s).map_err(|_| malformed(line, "creation out of range"))?;
            Timestamp::from_second(s)
                .map(Some)
                .map_err(|e| malformed(line, format!("creation: {e}")))
        }
    }
}

fn parse_bool(v: &[u8]) -> Option<bool> {
    match v {
        b"on" | b"yes" => Some(true),
        b"off" | b"no" => Some(false),
        _ => None,
    }
}

fn text(line: u64, v: &[u8]) -> Result<String, ZfsError> {
    std::str::from_utf8(v)
        .map(str::to_owned)
        .map_err(|_| malformed(line, "value is not UTF-8"))
}

fn empty_dataset(name: String) -> Dataset {
    Dataset {
        name,
        kind: DatasetKind::Other(String::new()),
        creation: None,
        guid: None,
        used: None,
        readonly: None,
        mounted: None,
        mountpoint: None,
        createtxg: None,
        receive_resume_token: None,
        user_properties: BTreeMap::new(),
        other_properties: BTreeMap::new(),
        snapshots: Vec::new(),
    }
}

impl ListingParser {
    fn record(&mut self, no: u64, name: &[u8], prop: &[u8], value: &[u8]) -> Result<(), ZfsError> {
        if name != self.cur_name.as_slice() {
            self.flush()?;
            self.start(no, name)?;
        }
        match &mut self.cur {
            Current::None => Ok(()), // bookmarks and other ignored objects
            Current::Snapshot(s) => match prop {
                b"guid" => {
                    s.guid = parse_u64(no, "guid", value)?;
                    Ok(())
                }
                b"creation" => {
                    s.creation = parse_time(no, value)?;
                    Ok(())
                }
                b"createtxg" => {
                    s.createtxg = parse_u64(no, "createtxg", value)?;
                    Ok(())
                }
                b"userrefs" => {
                    let n = parse_u64(no, "userrefs", value)?.unwrap_or(0);
                    s.userrefs = u32::try_from(n).unwrap_or(u32::MAX);
                    Ok(())
                }
                b"used" => {
                    s.used = parse_u64(no, "used", value)?.unwrap_or(0);
                    Ok(())
                }
                b"written" => {
                    s.written = parse_u64(no, "written", value)?;
                    Ok(())
                }
                b"type" => {
                    if value != b"snapshot" {
                        return Err(malformed(no, "name has '@' but type is not snapshot"));
                    }
                    Ok(())
                }
                _ => Ok(()),
            },
            Current::Dataset(d) => {
                match prop {
                    b"type" => {
                        d.kind = match value {
                            b"filesystem" => DatasetKind::Filesystem,
                            b"volume" => DatasetKind::Volume,
                            other => DatasetKind::Other(text(no, other)?),
                        }
                    }
                    b"creation" => d.creation = parse_time(no, value)?,
                    b"guid" => d.guid = parse_u64(no, "guid", value)?,
                    b"used" => d.used = parse_u64(no, "used", value)?,
                    b"createtxg" => d.createtxg = parse_u64(no, "createtxg", value)?,
                    b"readonly" => d.readonly = parse_bool(value),
                    b"mounted" => d.mounted = parse_bool(value),
                    b"mountpoint" => {
                        if value != b"-" {
                            d.mountpoint = Some(text(no, value)?)
                        }
                    }
                    b"receive_resume_token" => {
                        if value != b"-" {
                            d.receive_resume_token = Some(text(no, value)?)
                        }
                    }
                    b"userrefs" => {}
                    _ => {
                        if value != b"-" {
                            let p = text(no, prop)?;
                            let v = text(no, value)?;
                            if p.starts_with(USER_NAMESPACE) {
                                d.user_properties.insert(p, v);
                            } else {
                                d.other_properties.insert(p, v);
                            }
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn start(&mut self, no: u64, name: &[u8]) -> Result<(), ZfsError> {
        self.cur_name.clear();
        self.cur_name.extend_from_slice(name);
        if find_byte(b'#', name).is_some() {
            self.cur = Current::None;
            return Ok(());
        }
        if let Some(at) = find_byte(b'@', name) {
            let parent = &name[..at];
            let idx = match self.datasets.last() {
                Some(d) if d.name.as_bytes() == parent => self.datasets.len() - 1,
                _ => {
                    let p = text(no, parent)?;
                    match self.index.get(&p) {
                        Some(&i) => i,
                        None => {
                            return Err(malformed(
                                no,
                                format!("snapshot of {p} listed before {p} itself"),
                            ));
                        }
                    }
                }
            };
            self.cur = Current::Snapshot(SnapAcc {
                parent: idx,
                name: text(no, &name[at + 1..])?,
                first_line: no,
                ..SnapAcc::default()
            });
        } else {
            self.cur = Current::Dataset(empty_dataset(text(no, name)?));
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ZfsError> {
        match std::mem::take(&mut self.cur) {
            Current::None => {}
            Current::Dataset(d) => {
                self.index.insert(d.name.clone(), self.datasets.len());
                self.datasets.push(d);
            }
            Current::Snapshot(s) => {
                let guid = s.guid.ok_or_else(|| {
                    malformed(s.first_line, format!("snapshot {} has no guid", s.name))
                })?;
                let creation = s.creation.ok_or_else(|| {
                    malformed(s.first_line, format!("snapshot {} has no creation", s.name))
                })?;
                // `parent` always indexes `datasets`: it was looked up there in `start`.
                if let Some(d) = self.datasets.get_mut(s.parent) {
                    d.snapshots.push(Snapshot {
                        name: s.name,
                        guid,
                        creation,
                        createtxg: s.createtxg,
                        userrefs: s.userrefs,
                        used: s.used,
                        written: s.written,
                    });
                }
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<Dataset>, ZfsError> {
        self.flush()?;
        for d in &mut self.datasets {
            sort_snapshots(&mut d.snapshots);
        }
        Ok(self.datasets)
    }
}

/// Order snapshots oldest first: by createtxg (exact), then creation (seconds).
pub fn sort_snapshots(snaps: &mut [Snapshot]) {
    let key = |s: &Snapshot| (s.createtxg, s.creation);
    if snaps.windows(2).all(|w| key(&w[0]) <= key(&w[1])) {
        return;
    }
    snaps.sort_by_key(key);
}

/// `zfs holds -H <snap…>` argv vectors, at most `batch` snapshots each (full names).
/// Ask only for the snapshots the planner needs: `zfs holds` is slow on many snapshots.
pub fn holds_argvs(snapshots: &[String], batch: usize) -> Vec<Vec<String>> {
    snapshots
        .chunks(batch.max(1))
        .map(|c| {
            let mut v = vec!["zfs".to_string(), "holds".into(), "-H".into()];
            v.extend(c.iter().cloned());
            v
        })
        .collect()
}

/// Parse `zfs holds -H`: `name<TAB>tag<TAB>timestamp` → full snapshot name → tags.
///
/// Output that is not the `-H` form is refused, never read as "no holds": the aligned
/// table with its `NAME  TAG  TIMESTAMP` header (what `zfs holds` prints without `-H`), or
/// any line that is not `name<TAB>tag<TAB>…` with a snapshot name.
pub fn parse_holds(out: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (n, l) in out.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let mut f = l.split('\t');
        match (f.next(), f.next()) {
            (Some(name), Some(tag)) if name.contains('@') && !tag.is_empty() => {
                m.entry(name.to_string()).or_default().push(tag.to_string());
            }
            _ => {
                return Err(format!(
                    "`zfs holds -H` printed line {} as `{}`, not `snapshot<TAB>tag<TAB>time`{}",
                    n + 1,
                    l.chars().take(80).collect::<String>(),
                    if l.trim_start().starts_with("NAME") {
                        " (the header of the aligned table: this zfs ignored -H)"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    Ok(m)
}

/// Decide ZFS capabilities from `zfs version` (status, stdout+stderr) and the usage text
/// `zfs` prints when run without arguments (stderr). Pure.
///
/// OpenZFS ≥ 0.8 answers `zfs version`; older FreeBSD ZFS does not but lists `bookmark` in
/// its usage; zfs-fuse has neither.
pub fn detect_capabilities(
    version_ok: bool,
    version_out: &str,
    usage: &str,
) -> Option<ZfsCapabilities> {
    let looks_like_zfs = usage.contains("usage: zfs") || version_ok;
    if !looks_like_zfs {
        return None;
    }
    let version = if version_ok {
        version_out
            .lines()
            .next()
            .map(|l| l.trim().trim_start_matches("zfs-").to_string())
            .filter(|s| !s.is_empty())
    } else {
        None
    };
    // One usage entry per tab-started piece: legacy FreeBSD ZFS glues `bookmark …` onto the
    // `rename -u …` line with a TAB and no newline (zfs_main.c's HELP_RENAME lacks its `\n`);
    // a command word may name aliases (`receive|recv`, `snapshot|snap`).
    let entries: Vec<&str> = usage
        .lines()
        .flat_map(|l| l.split('\t'))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let line_with = |cmd: &str| -> Vec<&str> {
        entries
            .iter()
            .copied()
            .filter(|e| {
                e.split_whitespace()
                    .next()
                    .is_some_and(|w| w.split('|').any(|alias| alias == cmd))
            })
            .collect()
    };
    let bookmarks = !line_with("bookmark").is_empty();
    let list_p = line_with("list")
        .iter()
        .any(|l| l.split(']').next().is_some_and(|f| f.contains('p')));
    let resume_tokens = line_with("receive").iter().any(|l| l.contains("-A"));
    let batch_destroy = line_with("destroy").iter().any(|l| l.contains("[,...]"));
    let holds_list = line_with("holds").iter().any(|l| has_flag(l, 'H'));
    let flavour = if version_ok || bookmarks {
        ZfsFlavour::OpenZfs
    } else {
        ZfsFlavour::ZfsFuse
    };
    Some(ZfsCapabilities {
        flavour,
        version,
        list_p,
        resume_tokens,
        bookmarks,
        batch_destroy,
        holds_list,
    })
}

/// True when the first `[-…]` group of a usage line contains flag `c`.
fn has_flag(usage_line: &str, c: char) -> bool {
    usage_line
        .split('[')
        .skip(1)
        .filter_map(|g| g.strip_prefix('-'))
        .map(|g| g.split(']').next().unwrap_or(""))
        .any(|g| g.chars().all(|ch| ch.is_ascii_alphabetic()) && g.contains(c))
}

/// `zfs create -p -o k=v … dataset`: the dataset and its missing parents, with properties.
pub fn create_argv(dataset: &str, properties: &BTreeMap<String, String>) -> Vec<String> {
    let mut v: Vec<String> = vec!["zfs".into(), "create".into(), "-p".into()];
    for (k, val) in properties {
        v.push("-o".into());
        v.push(format!("{k}={val}"));
    }
    v.push(dataset.into());
    v
}

/// `zfs set k=v dataset`, one property per command (zfs-fuse takes one at a time).
pub fn set_argv(dataset: &str, property: &str, value: &str) -> Vec<String> {
    vec![
        "zfs".into(),
        "set".into(),
        format!("{property}={value}"),
        dataset.into(),
    ]
}

/// `zfs mount dataset`.
pub fn mount_argv(dataset: &str) -> Vec<String> {
    vec!["zfs".into(), "mount".into(), dataset.into()]
}

/// `zfs unmount dataset`.
pub fn unmount_argv(dataset: &str) -> Vec<String> {
    vec!["zfs".into(), "unmount".into(), dataset.into()]
}

/// `zfs snapshot dataset@name`.
pub fn snapshot_argv(dataset: &str, name: &str) -> Vec<String> {
    vec!["zfs".into(), "snapshot".into(), format!("{dataset}@{name}")]
}

/// `zfs send [-I @base] dataset@to`, or `zfs send -t TOKEN` to resume.
pub fn send_argv(
    dataset: &str,
    base: Option<&str>,
    to: &str,
    resume_token: Option<&str>,
) -> Vec<String> {
    if let Some(t) = resume_token {
        return vec!["zfs".into(), "send".into(), "-t".into(), t.into()];
    }
    let mut v: Vec<String> = vec!["zfs".into(), "send".into()];
    if let Some(b) = base {
        v.push("-I".into());
        v.push(format!("@{b}"));
    }
    v.push(format!("{dataset}@{to}"));
    v
}

/// `zfs receive -u [-s] -d POOL`: unmounted, under the target pool with the sent path (`-d`
/// creates missing parents), never `-F` (a modified replica makes the receive fail instead of
/// being rolled back silently).
pub fn receive_argv(pool: &str, resumable: bool) -> Vec<String> {
    let mut v: Vec<String> = vec!["zfs".into(), "receive".into(), "-u".into()];
    if resumable {
        v.push("-s".into());
    }
    v.push("-d".into());
    v.push(pool.into());
    v
}

/// `zfs hold spoolkeeper dataset@snapshot`.
pub fn hold_argv(dataset: &str, snapshot: &str) -> Vec<String> {
    vec![
        "zfs".into(),
        "hold".into(),
        HOLD_TAG.into(),
        format!("{dataset}@{snapshot}"),
    ]
}

/// `zfs release spoolkeeper dataset@snapshot`.
pub fn release_argv(dataset: &str, snapshot: &str) -> Vec<String> {
    vec![
        "zfs".into(),
        "release".into(),
        HOLD_TAG.into(),
        format!("{dataset}@{snapshot}"),
    ]
}

/// The hold tag spoolkeeper puts on replication bases.
pub const HOLD_TAG: &str = "spoolkeeper";

/// `zfs destroy dataset@a,b,c` (batched where supported) or one per snapshot. Names are
/// checked by `retention::destroy_batches`, which refuses anything that `zfs destroy` could
/// read as a list or a range.
pub fn destroy_argvs(
    dataset: &str,
    snapshots: &[String],
    batch: bool,
) -> Result<Vec<Vec<String>>, String> {
    let batches = crate::decide::retention::destroy_batches(dataset, snapshots, batch, 64 * 1024)
        .map_err(|e| e.to_string())?;
    Ok(batches
        .into_iter()
        .map(|args| {
            let mut v: Vec<String> = vec!["zfs".into(), "destroy".into()];
            v.extend(args);
            v
        })
        .collect())
}

/// Where the host has no comma batch destroy (zfs-fuse, old OpenZFS): ONE remote command that
/// reads `dataset@snapshot` lines on stdin ([`destroy_each_stdin`]) and runs one `zfs destroy`
/// per line, stopping at the first failure. One SSH round trip for the whole list instead of
/// one per snapshot (measured on the lab: ~100 ms per round trip, so 5,000 snapshots took
/// minutes). The script is a constant; the names arrive as data, never as shell text.
pub const DESTROY_EACH_SCRIPT: &str =
    r#"while IFS= read -r s; do zfs destroy "$s" || exit 1; done"#;

/// `sh -c DESTROY_EACH_SCRIPT sk-destroy` (see [`DESTROY_EACH_SCRIPT`]).
pub fn destroy_each_argv() -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        DESTROY_EACH_SCRIPT.into(),
        "sk-destroy".into(),
    ]
}

/// The stdin of [`destroy_each_argv`]: one `dataset@snapshot` per line, names checked as for
/// [`destroy_argvs`], and no line break inside a name (ZFS has none; a line is one name).
pub fn destroy_each_stdin(dataset: &str, snapshots: &[String]) -> Result<Vec<u8>, String> {
    if let Some(bad) = snapshots.iter().find(|n| n.contains(['\n', '\r', '\0'])) {
        return Err(format!("snapshot name {bad:?} holds a line break or NUL"));
    }
    if dataset.contains(['\n', '\r', '\0']) {
        return Err(format!(
            "dataset name {dataset:?} holds a line break or NUL"
        ));
    }
    let lines = crate::decide::retention::destroy_batches(dataset, snapshots, false, usize::MAX)
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for l in lines.into_iter().flatten() {
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    Ok(out)
}

/// `zfs get -Hp -o value guid dataset@snapshot`.
pub fn guid_argv(dataset: &str, snapshot: &str) -> Vec<String> {
    ["zfs", "get", "-Hp", "-o", "value", "guid"]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("{dataset}@{snapshot}")])
        .collect()
}

/// `zfs rollback [-r] dataset@snapshot`.
pub fn rollback_argv(dataset: &str, snapshot: &str, destroy_later: bool) -> Vec<String> {
    let mut v: Vec<String> = vec!["zfs".into(), "rollback".into()];
    if destroy_later {
        v.push("-r".into());
    }
    v.push(format!("{dataset}@{snapshot}"));
    v
}

/// `zfs rename dataset to` (`-u`: the renamed dataset is not remounted; both flavours have
/// it for filesystems).
pub fn rename_argv(dataset: &str, to: &str) -> Vec<String> {
    vec!["zfs".into(), "rename".into(), dataset.into(), to.into()]
}

/// `zfs receive -A dataset`.
pub fn abort_receive_argv(dataset: &str) -> Vec<String> {
    vec!["zfs".into(), "receive".into(), "-A".into(), dataset.into()]
}

/// `zfs inherit property dataset` (clears a user property).
pub fn inherit_argv(dataset: &str, property: &str) -> Vec<String> {
    vec![
        "zfs".into(),
        "inherit".into(),
        property.into(),
        dataset.into(),
    ]
}

/// Save `zfs send -I @base dataset@snapshot` into `file` on the host (written to
/// `file.part`, renamed when complete). A fixed script; every value is a quoted argument.
pub fn send_to_file_argv(dataset: &str, base: &str, snapshot: &str, file: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        "mkdir -p \"$(dirname \"$1\")\" && zfs send -I \"$2\" \"$3\" > \"$1.part\" && mv \"$1.part\" \"$1\"".into(),
        "sh".into(),
        file.into(),
        format!("@{base}"),
        format!("{dataset}@{snapshot}"),
    ]
}

/// How the source node reaches the target for a direct stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectTarget {
    pub host: String,
    pub user: String,
    pub port: u32,
    pub known_hosts: Option<String>,
    pub identity: Option<String>,
}

/// `ssh` argv run on the source node to reach the target, strict host keys, no prompts.
pub fn direct_ssh_argv(t: &DirectTarget, remote: &[String]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "ssh".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        // A link that dies mid-stream must fail the transfer within seconds, not hang the
        // apply for the kernel's TCP retransmission timeout (~15 min): keepalives over the
        // encrypted channel, and a bound on the connect.
        "-o".into(),
        "ConnectTimeout=10".into(),
        "-o".into(),
        "ServerAliveInterval=5".into(),
        "-o".into(),
        "ServerAliveCountMax=3".into(),
    ];
    if let Some(k) = &t.known_hosts {
        v.push("-o".into());
        v.push(format!("UserKnownHostsFile={k}"));
    }
    if let Some(i) = &t.identity {
        v.push("-i".into());
        v.push(i.clone());
    }
    v.push("-p".into());
    v.push(t.port.to_string());
    v.push("-l".into());
    v.push(t.user.clone());
    v.push(t.host.clone());
    v.push("--".into());
    // ssh joins its arguments into one string for the remote shell: quote each for it.
    v.push(crate::adapters::shell::remote_command_line(remote));
    v
}

/// A stream compressor on the wire of a replication, chosen by the planner where both ends
/// have it (`replication.compress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compressor {
    /// `zstd -1 -T0` (every core), `zstd -d`.
    Zstd,
    /// `lz4 -1`, `lz4 -d`.
    Lz4,
}

impl Compressor {
    /// The compressing end of the pipe: stdin to stdout.
    pub fn compress_argv(self) -> Vec<String> {
        let v: &[&str] = match self {
            Compressor::Zstd => &["zstd", "-1", "-T0", "-q", "-c"],
            Compressor::Lz4 => &["lz4", "-1", "-q", "-c", "-"],
        };
        v.iter().map(|s| s.to_string()).collect()
    }

    /// The decompressing end: stdin to stdout.
    pub fn decompress_argv(self) -> Vec<String> {
        let v: &[&str] = match self {
            Compressor::Zstd => &["zstd", "-d", "-q", "-c"],
            Compressor::Lz4 => &["lz4", "-d", "-q", "-c", "-"],
        };
        v.iter().map(|s| s.to_string()).collect()
    }
}

/// The receive end of a compressed stream: `sh -c 'DECOMPRESS | zfs receive …'` (the
/// receive's status is the pipeline's: a truncated or corrupt stream makes it fail).
pub fn receive_compressed_argv(recv: &[String], c: Option<Compressor>) -> Vec<String> {
    let Some(c) = c else {
        return recv.to_vec();
    };
    let q = |v: &[String]| crate::adapters::shell::remote_command_line(v);
    vec![
        "sh".into(),
        "-c".into(),
        format!("{} | {}", q(&c.decompress_argv()), q(recv)),
    ]
}

/// The send end of a compressed relayed stream: `sh -c 'zfs send … | COMPRESS'`. Its status
/// is the compressor's: a failed send ends the stream early, and the receive refuses a
/// truncated stream, so the replication fails all the same (the send's stderr is kept).
pub fn send_compressed_argv(send: &[String], c: Option<Compressor>) -> Vec<String> {
    let Some(c) = c else {
        return send.to_vec();
    };
    let q = |v: &[String]| crate::adapters::shell::remote_command_line(v);
    vec![
        "sh".into(),
        "-c".into(),
        format!("{} | {}", q(send), q(&c.compress_argv())),
    ]
}

/// The direct transport: one `sh -c 'zfs send … | ssh target zfs receive …'` on the source.
/// Every argument is quoted; the receive's exit status is the pipeline's (a failed or
/// truncated send makes the receive fail).
///
/// A `dd bs=1M status=progress` between them counts the stream: its progress lines (every
/// second) and its closing summary (`N bytes …` on GNU and FreeBSD ≥ 12 `dd`) give the bytes
/// sent ([`parse_stream_bytes`]); it copies what it reads unchanged (no `conv`), a partial
/// read of the pipe included. The pipeline's stderr goes to its stdout (`2>&1`), so that the
/// controller reads the progress while the stream runs.
///
/// With a compressor, it sits after `dd` (which counts the stream's own bytes) and `ssh`'s
/// remote command is `sh -c 'DECOMPRESS | zfs receive …'` ([`direct_ssh_argv`] of
/// [`receive_compressed_argv`]): a failed send ends the compressed stream early, which the
/// receive refuses as truncated.
pub fn direct_pipeline_argv(
    send: &[String],
    ssh: &[String],
    compress: Option<Compressor>,
) -> Vec<String> {
    let q = |v: &[String]| crate::adapters::shell::remote_command_line(v);
    let squeeze = compress
        .map(|c| format!(" | {}", q(&c.compress_argv())))
        .unwrap_or_default();
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "{{ {} | dd bs=1M status=progress{squeeze} | {}; }} 2>&1",
            q(send),
            q(ssh)
        ),
    ]
}

/// The stream size from `dd`'s closing summary: the last line starting with `N bytes`
/// (GNU: `137 bytes copied, …` or `137 bytes (137 B) copied, …`; BSD: `137 bytes
/// transferred in …`).
pub fn parse_stream_bytes(stderr: &str) -> Option<u64> {
    // progress lines end with `\r`, the summary with `\n`
    stderr.split(['\n', '\r']).rev().find_map(|l| {
        let (n, rest) = l.trim().split_once(' ')?;
        rest.starts_with("bytes").then(|| n.parse().ok()).flatten()
    })
}

// ---------------------------------------------------------------- scratch clones

/// The user property that marks a scratch clone (restore or drill) with the run that made it;
/// [`destroy_clone_argv`] only ever destroys a dataset whose name says it is one.
pub const SCRATCH_PROPERTY: &str = "spoolkeeper:scratch";

/// The name of a scratch clone of `dataset` for `purpose` (`restore`, `drill`): a sibling of
/// the dataset, `<dataset>_<prefix>_<purpose>_<stamp>`, so that it is never a descendant that
/// a recursive operation on the instance could reach.
pub fn scratch_clone_name(dataset: &str, prefix: &str, purpose: &str, stamp: &str) -> String {
    format!("{dataset}_{prefix}_{purpose}_{stamp}")
}

fn is_scratch_name(name: &str) -> bool {
    name.rsplit('/')
        .next()
        .is_some_and(|leaf| leaf.contains("_restore_") || leaf.contains("_drill_"))
        && !name.contains('@')
}

/// `zfs clone -o readonly=on|off -o mountpoint=MP -o spoolkeeper:scratch=PURPOSE:STAMP:DS@SNAP
/// DS@SNAP CLONE` (the property is what [`parse_scratch`] reads back).
pub fn clone_argv(
    dataset: &str,
    snapshot: &str,
    clone: &str,
    mountpoint: &str,
    readonly: bool,
    purpose: &str,
    stamp: &str,
) -> Result<Vec<String>, String> {
    if !is_scratch_name(clone) {
        return Err(format!("`{clone}` is not a scratch clone name"));
    }
    if !mountpoint.starts_with('/') {
        return Err(format!("clone mountpoint `{mountpoint}` is not absolute"));
    }
    Ok(vec![
        "zfs".into(),
        "clone".into(),
        "-o".into(),
        format!("readonly={}", if readonly { "on" } else { "off" }),
        "-o".into(),
        format!("mountpoint={mountpoint}"),
        "-o".into(),
        format!("{SCRATCH_PROPERTY}={purpose}:{stamp}:{dataset}@{snapshot}"),
        format!("{dataset}@{snapshot}"),
        clone.into(),
    ])
}

/// `zfs destroy CLONE`: never `-r`/`-R`, and only a name [`scratch_clone_name`] made.
pub fn destroy_clone_argv(clone: &str) -> Result<Vec<String>, String> {
    if !is_scratch_name(clone) {
        return Err(format!(
            "refusing to destroy `{clone}`: not a scratch clone"
        ));
    }
    Ok(vec!["zfs".into(), "destroy".into(), clone.into()])
}

/// `zfs get -H -o value spoolkeeper:scratch CLONE`: which run made the clone (`-` when unset).
pub fn scratch_owner_argv(clone: &str) -> Vec<String> {
    ["zfs", "get", "-H", "-o", "value", SCRATCH_PROPERTY]
        .iter()
        .map(|s| s.to_string())
        .chain([clone.to_owned()])
        .collect()
}

/// `zfs get -H -r -s local -o name,value spoolkeeper:scratch POOL`: the scratch clones of a
/// pool (only datasets where the property is set print a line; no `-t`: zfs-fuse has none).
pub fn scratch_listing_argv(pool: &str) -> Vec<String> {
    [
        "zfs",
        "get",
        "-H",
        "-r",
        "-s",
        "local",
        "-o",
        "name,value",
        SCRATCH_PROPERTY,
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([pool.to_owned()])
    .collect()
}

/// The clones [`scratch_listing_argv`] printed; lines that are not a scratch clone's are
/// skipped (a hand-set property on another dataset is never taken for one).
pub fn parse_scratch(out: &str) -> Vec<crate::model::ScratchClone> {
    let mut v = Vec::new();
    for l in out.lines() {
        let Some((name, value)) = l.split_once('\t') else {
            continue;
        };
        if !is_scratch_name(name) {
            continue;
        }
        let mut parts = value.trim().splitn(3, ':');
        let (Some(purpose), Some(stamp), Some(origin)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Some((ds, snap)) = origin.split_once('@') else {
            continue;
        };
        let since = stamp
            .split('_')
            .next()
            .and_then(|t| jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", t).ok())
            .and_then(|dt| dt.to_zoned(jiff::tz::TimeZone::UTC).ok())
            .map(|z| z.timestamp());
        v.push(crate::model::ScratchClone {
            name: name.to_owned(),
            purpose: purpose.to_owned(),
            since,
            origin_dataset: ds.to_owned(),
            origin_snapshot: snap.to_owned(),
        });
    }
    v
}

/// The teardown of a scratch clone as one fixed script (the name is its positional argument):
/// refuse a dataset not marked as scratch, then destroy it, retrying while busy (zfs-fuse and
/// a just-stopped server); one that does not exist any more is done.
pub fn teardown_scratch_argv(clone: &str) -> Result<Vec<String>, String> {
    if !is_scratch_name(clone) {
        return Err(format!(
            "refusing to destroy `{clone}`: not a scratch clone"
        ));
    }
    Ok(vec![
        "sh".into(),
        "-c".into(),
        concat!(
            "v=$(zfs get -H -o value spoolkeeper:scratch \"$1\" 2>/dev/null); ",
            "if [ \"$v\" = - ]; then echo \"$1 is not a scratch clone\" >&2; exit 1; fi; ",
            "i=0; while :; do out=$(zfs destroy \"$1\" 2>&1) && exit 0; ",
            "case $out in *'does not exist'*) exit 0 ;; esac; ",
            "i=$((i+1)); if [ $i -ge 10 ]; then echo \"$out\" >&2; exit 1; fi; sleep 1; done"
        )
        .into(),
        "sh".into(),
        clone.into(),
    ])
}

/// A destroy that may succeed when retried: zfs-fuse (and OpenZFS under load) reports a clone
/// busy for a moment after its last user went away.
pub fn destroy_is_busy(stderr: &str) -> bool {
    stderr.contains("busy")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_size_is_read_from_gnu_and_bsd_dd() {
        // GNU coreutils 9.1 (Debian 12), recorded on this machine: `head -c 52224 /dev/zero |
        // dd bs=1M`
        let gnu = "0+1 records in\n0+1 records out\n52224 bytes (52 kB, 51 KiB) copied, 0.00014156 s, 369 MB/s\n";
        assert_eq!(parse_stream_bytes(gnu), Some(52_224));
        // FreeBSD dd(1), from the format string of bin/dd/misc.c (no FreeBSD host here):
        // `%ju bytes transferred in %.6f secs (%.0f bytes/sec)`
        let bsd = "0+13 records in\n0+13 records out\n52224 bytes transferred in 0.015298 secs (3413778 bytes/sec)\n";
        assert_eq!(parse_stream_bytes(bsd), Some(52_224));
        assert_eq!(parse_stream_bytes("cannot receive: failed\n"), None);
        // GNU `status=progress`: a line rewritten with `\r` every second
        let progress = "1048576 bytes (1.0 MB, 1.0 MiB) copied, 1 s, 1.0 MB/s\r3145728 bytes (3.1 MB, 3.0 MiB) copied, 2 s, 1.5 MB/s\r";
        assert_eq!(parse_stream_bytes(progress), Some(3_145_728));
        assert_eq!(parse_stream_bytes(""), None);
    }

    #[test]
    fn direct_ssh_fails_fast_on_a_dead_link_and_keeps_the_remote_argv_last() {
        let t = DirectTarget {
            host: "10.77.0.12".into(),
            user: "root".into(),
            port: 22,
            known_hosts: None,
            identity: None,
        };
        let recv = vec!["zfs".to_string(), "receive".into(), "-u".into()];
        let v = direct_ssh_argv(&t, &recv);
        let opts: Vec<&str> = v
            .windows(2)
            .filter(|w| w[0] == "-o")
            .map(|w| w[1].as_str())
            .collect();
        for o in [
            "BatchMode=yes",
            "StrictHostKeyChecking=yes",
            "ServerAliveInterval=5",
            "ServerAliveCountMax=3",
            "ConnectTimeout=10",
        ] {
            assert!(opts.contains(&o), "{o} missing in {v:?}");
        }
        assert_eq!(v.last().map(String::as_str), Some("zfs receive -u"));
        assert_eq!(v[v.len() - 2], "--");
    }

    #[test]
    fn destroy_each_is_one_command_with_the_names_on_stdin() {
        let names: Vec<String> = ["sk_20261128T180000Z", "sk_20261128T190000Z"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let argv = destroy_each_argv();
        assert_eq!(argv[..2], ["sh", "-c"]);
        assert!(!argv[2].contains("sk_"), "no name in the script");
        assert_eq!(
            destroy_each_stdin("zdata/imap/students", &names).unwrap(),
            b"zdata/imap/students@sk_20261128T180000Z\nzdata/imap/students@sk_20261128T190000Z\n"
        );
        assert!(destroy_each_stdin("zdata/x", &[]).unwrap().is_empty());
        for bad in ["a\nb", "a,b", "a@b", "", "a%b"] {
            assert!(
                destroy_each_stdin("zdata/x", &[bad.to_string()]).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(destroy_each_stdin("zdata/x\n", &names).is_err());
    }

    /// The script really destroys each line's snapshot and stops at the first failure
    /// (a `zfs` stand-in on PATH records its arguments).
    #[test]
    fn destroy_each_script_runs_one_destroy_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let fake = dir.path().join("zfs");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho \"$*\" >> '{}'\n[ \"$2\" != 'p/d@bad' ]\n",
                log.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let run = |input: &[u8]| {
            let _ = std::fs::remove_file(&log);
            let argv = destroy_each_argv();
            let mut child = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .env("PATH", &path)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            child.stdin.take().unwrap().write_all(input).unwrap();
            let ok = child.wait().unwrap().success();
            (ok, std::fs::read_to_string(&log).unwrap_or_default())
        };
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (ok, seen) = run(&destroy_each_stdin("p/d", &names(&["a", "b c"])).unwrap());
        assert!(ok);
        assert_eq!(seen, "destroy p/d@a\ndestroy p/d@b c\n");
        let (ok, seen) = run(&destroy_each_stdin("p/d", &names(&["a", "bad", "z"])).unwrap());
        assert!(!ok);
        assert_eq!(seen, "destroy p/d@a\ndestroy p/d@bad\n");
    }

    #[test]
    fn find_byte_matches_naive_search() {
        let hay: Vec<u8> = (0..200u32).map(|i| (i * 7 % 251) as u8).collect();
        for needle in [0u8, 7, 9, 10, 250, 255] {
            for start in 0..20 {
                let h = &hay[start..];
                assert_eq!(
                    find_byte(needle, h),
                    h.iter().position(|&b| b == needle),
                    "needle {needle} start {start}"
                );
            }
        }
    }

    #[test]
    fn find_either_matches_naive_search() {
        let hay: Vec<u8> = (0..300u32).map(|i| (i * 13 % 256) as u8).collect();
        for (a, b) in [(9u8, 10u8), (0, 255), (200, 7), (1, 1)] {
            for start in 0..20 {
                let h = &hay[start..];
                assert_eq!(
                    find_either(a, b, h),
                    h.iter().position(|&x| x == a || x == b),
                    "{a} {b} {start}"
                );
            }
        }
    }

    #[test]
    fn records_straddling_reads_are_whole() {
        struct Dribble<'a>(&'a [u8], usize);
        impl Read for Dribble<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.1.min(self.0.len()).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let text = b"pool/a\ttype\tfilesystem\n\npool/a\tsk:x\tv\twith tab\nlast\tp\tv";
        for step in [1, 2, 3, 7, 1000] {
            let mut got = Vec::new();
            for_each_record(Dribble(text, step), |n, a, b, c| {
                got.push((n, a.to_vec(), b.to_vec(), c.to_vec()));
                Ok(())
            })
            .unwrap();
            assert_eq!(got.len(), 3, "step {step}");
            assert_eq!(
                got[0],
                (
                    1,
                    b"pool/a".to_vec(),
                    b"type".to_vec(),
                    b"filesystem".to_vec()
                )
            );
            assert_eq!(
                got[1],
                (
                    3,
                    b"pool/a".to_vec(),
                    b"sk:x".to_vec(),
                    b"v\twith tab".to_vec()
                )
            );
            assert_eq!(got[2], (4, b"last".to_vec(), b"p".to_vec(), b"v".to_vec()));
        }
        let err = for_each_record(&b"a\tb\nc\td\te\n"[..], |_, _, _, _| Ok(())).unwrap_err();
        assert!(err.to_string().contains("line 1: only one tab"), "{err}");
    }

    #[test]
    fn lines_straddling_reads_are_whole() {
        // A reader that returns one byte at a time exercises every chunk boundary.
        struct OneByte<'a>(&'a [u8]);
        impl Read for OneByte<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() || buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        let mut got = Vec::new();
        for_each_line(OneByte(b"a\tb\tc\n\nlast"), |n, l| {
            got.push((n, l.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            got,
            vec![
                (1, b"a\tb\tc".to_vec()),
                (2, b"".to_vec()),
                (3, b"last".to_vec())
            ]
        );
    }

    #[test]
    fn human_numbers_are_rejected() {
        let err = parse_listing_bytes(b"p/a\tused\t161M\n").unwrap_err();
        assert!(err.to_string().contains("use -p"), "{err}");
    }

    #[test]
    fn snapshot_before_its_dataset_is_an_error() {
        let err = parse_listing_bytes(b"p/a@s\tguid\t1\n").unwrap_err();
        assert!(err.to_string().contains("listed before"), "{err}");
    }

    #[test]
    fn snapshots_are_ordered_by_txg_then_creation() {
        let text = "p/a\ttype\tfilesystem\n\
                    p/a@late\tguid\t1\np/a@late\tcreation\t100\np/a@late\tcreatetxg\t9\n\
                    p/a@early\tguid\t2\np/a@early\tcreation\t100\np/a@early\tcreatetxg\t3\n";
        let ds = parse_listing_bytes(text.as_bytes()).unwrap();
        let names: Vec<_> = ds[0].snapshots.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["early", "late"]);
    }

    #[test]
    fn properties_list_leaves_out_resume_token_without_capability() {
        let p = listing_properties(None, &["spoolkeeper:role"], &["type", "compression"]);
        assert!(!p.iter().any(|x| x == "receive_resume_token"));
        assert_eq!(p.iter().filter(|x| *x == "type").count(), 1);
        assert!(p.iter().any(|x| x == "compression"));
        let argv = listing_argv(&p, &["zdata/imap/students".into()]);
        assert_eq!(
            &argv[..6],
            ["zfs", "get", "-Hp", "-r", "-o", "name,property,value"]
        );
        assert_eq!(argv.last().map(String::as_str), Some("zdata/imap/students"));
    }

    #[test]
    fn missing_dataset_names_are_extracted() {
        let e = "cannot open 'skpool/does-not-exist': dataset does not exist\n";
        assert_eq!(missing_datasets(e), ["skpool/does-not-exist"]);
        assert!(only_missing_datasets(e));
        assert!(!only_missing_datasets("internal error: out of memory\n"));
    }

    #[test]
    fn holds_are_batched_and_parsed() {
        let snaps: Vec<String> = (0..5).map(|i| format!("p/a@s{i}")).collect();
        let v = holds_argvs(&snaps, 2);
        assert_eq!(v.len(), 3);
        assert_eq!(v[2], ["zfs", "holds", "-H", "p/a@s4"]);
        let h =
            parse_holds("p/a@s1\tkeep\tThu Jan  4 10:00 2024\np/a@s1\tsk\tThu Jan  4 10:00 2024\n")
                .unwrap();
        assert_eq!(h["p/a@s1"], ["keep", "sk"]);
        assert_eq!(parse_holds("").unwrap().len(), 0, "no holds");
        assert!(parse_holds("internal error\n").is_err());
    }
}
