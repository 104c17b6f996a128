//! Capability detection helpers that are not specific to one adapter. Pure.

use jiff::Timestamp;

use crate::model::JailCommands;

/// `which ezjail-admin jls jexec zstd lz4` (prints the paths of those found; exits 1 if any
/// missing): the jail commands ([`parse_which`]) and the stream compressors
/// ([`parse_compressors`]).
pub fn which_jail_commands_argv() -> Vec<String> {
    ["which", "ezjail-admin", "jls", "jexec", "zstd", "lz4"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Is `name` among the absolute paths `which` printed?
fn which_found(out: &str, name: &str) -> bool {
    out.lines()
        .any(|l| l.trim().rsplit('/').next() == Some(name) && l.trim().starts_with('/'))
}

/// Which stream compressors exist, from the same `which` output.
pub fn parse_compressors(out: &str) -> crate::model::Compressors {
    crate::model::Compressors {
        zstd: which_found(out, "zstd"),
        lz4: which_found(out, "lz4"),
    }
}

/// Which jail commands exist, from `which` output.
pub fn parse_which(out: &str) -> JailCommands {
    let found = |n: &str| which_found(out, n);
    JailCommands {
        ezjail_admin: found("ezjail-admin"),
        jls: found("jls"),
        jexec: found("jexec"),
    }
}

/// `date +%s%N`: nanoseconds on GNU date; BSD date prints seconds followed by `N`.
pub fn date_argv() -> Vec<String> {
    vec!["date".into(), "+%s%N".into()]
}

/// Remote clock from `date +%s%N` output, as nanoseconds since the epoch.
pub fn parse_date(out: &str) -> Option<i128> {
    let t = out.trim();
    if let Some(secs) = t.strip_suffix('N').or_else(|| t.strip_suffix("%N")) {
        return secs.parse::<i128>().ok().map(|s| s * 1_000_000_000);
    }
    if t.len() > 10 && t.chars().all(|c| c.is_ascii_digit()) {
        return t.parse().ok();
    }
    t.parse::<i128>().ok().map(|s| s * 1_000_000_000)
}

/// Clock offset (remote − controller) in ms and its uncertainty (half the round trip), from
/// the controller times just before sending and just after receiving `date`.
pub fn clock_offset_ms(before: Timestamp, after: Timestamp, remote_ns: i128) -> (i64, i64) {
    let b = before.as_nanosecond();
    let a = after.as_nanosecond();
    let mid = b + (a - b) / 2;
    let offset = (remote_ns - mid) / 1_000_000;
    let half = (a - b) / 2 / 1_000_000;
    (
        i64::try_from(offset).unwrap_or(i64::MAX),
        i64::try_from(half).unwrap_or(i64::MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_output_decides_jail_commands() {
        let c = parse_which("/usr/local/bin/ezjail-admin\n/usr/sbin/jls\n");
        assert!(c.ezjail_admin && c.jls && !c.jexec);
        assert_eq!(parse_which(""), JailCommands::default());
    }

    #[test]
    fn date_parses_gnu_and_bsd() {
        assert_eq!(
            parse_date("1700000000123456789\n"),
            Some(1_700_000_000_123_456_789)
        );
        assert_eq!(parse_date("1700000000N\n"), Some(1_700_000_000_000_000_000));
        assert_eq!(parse_date("garbage"), None);
    }

    #[test]
    fn offset_is_measured_from_the_midpoint() {
        let b = Timestamp::from_second(1000).unwrap();
        let a = Timestamp::from_second(1002).unwrap();
        // Remote says 1001 + 5 s: offset 5000 ms, uncertainty 1000 ms.
        assert_eq!(clock_offset_ms(b, a, 1_006_000_000_000), (5000, 1000));
    }
}
