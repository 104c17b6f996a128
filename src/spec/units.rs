//! Duration and size values as operators write them: `30s`, `10m`, `1h`, `7d`; `512M`, `80T`.
//!
//! Both serialise back to the shortest exact form, so a spec round-trips unchanged in meaning.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A positive span of time, e.g. `30s`, `10m`, `1h`, `7d` (also `1h30m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }
    pub fn as_std(self) -> std::time::Duration {
        self.0
    }
    pub fn as_secs(self) -> u64 {
        self.0.as_secs()
    }
    /// The same span as a `jiff::SignedDuration`, saturating.
    pub fn as_signed(self) -> jiff::SignedDuration {
        jiff::SignedDuration::from_secs(i64::try_from(self.0.as_secs()).unwrap_or(i64::MAX))
    }
}

/// Why a duration or size was refused; the message says what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(String);

/// The longest duration a spec may hold: ten years (retention is counted in snapshots, so
/// nothing needs more; a larger number is a typo).
pub const MAX_DURATION_SECS: u64 = 10 * 366 * 86_400;

impl FromStr for Duration {
    type Err = UnitError;
    /// One or more `<number><unit>` groups, units `s`, `m`, `h`, `d`, `w` in lower case
    /// (`30s`, `10m`, `1h30m`, `7d`, `2w`): `M` is refused, since in a spec where `512M` is a
    /// size it would read as months or megabytes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let bad = |why: &str| {
            UnitError(format!(
                "`{}` is not a duration: {why}; write a number and a unit s, m, h, d or w (lower case), like 30s, 10m, 1h or 7d",
                t.escape_default()
            ))
        };
        if t.is_empty() {
            return Err(bad("it is empty"));
        }
        if t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("a bare number could mean seconds or minutes"));
        }
        let mut total: u64 = 0;
        let mut digits = String::new();
        for c in t.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let unit: u64 = match c {
                's' => 1,
                'm' => 60,
                'h' => 3_600,
                'd' => 86_400,
                'w' => 7 * 86_400,
                'S' | 'H' | 'D' | 'W' | 'M' => {
                    return Err(bad("units are lower case (`M` is not minutes)"));
                }
                _ => return Err(bad("unexpected character")),
            };
            if digits.is_empty() {
                return Err(bad("a unit without a number"));
            }
            let n: u64 = digits.parse().map_err(|_| bad("the number is too large"))?;
            digits.clear();
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .filter(|v| *v <= MAX_DURATION_SECS)
                .ok_or_else(|| bad("longer than ten years"))?;
        }
        if !digits.is_empty() {
            return Err(bad("a number without a unit at the end"));
        }
        Ok(Self(std::time::Duration::from_secs(total)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        if secs == 0 {
            return f.write_str("0s");
        }
        for (unit, n) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
            if secs.is_multiple_of(n) {
                return write!(f, "{}{unit}", secs / n);
            }
        }
        write!(f, "{secs}s")
    }
}

/// A size in bytes, written as ZFS writes it: `512M`, `80T`, `4096` (binary multiples).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(u64);

impl Size {
    pub const fn bytes(self) -> u64 {
        self.0
    }
    pub const fn from_bytes(b: u64) -> Self {
        Self(b)
    }
}

const SIZE_UNITS: [(char, u32); 6] = [
    ('K', 10),
    ('M', 20),
    ('G', 30),
    ('T', 40),
    ('P', 50),
    ('E', 60),
];

impl FromStr for Size {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            UnitError(format!(
                "`{s}` is not a size: expected a whole number with an optional unit K, M, G, T, P or E, like 512M or 80T"
            ))
        };
        let t = s.trim();
        let (digits, shift) = match t.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let up = c.to_ascii_uppercase();
                let shift = SIZE_UNITS
                    .iter()
                    .find(|(u, _)| *u == up)
                    .map(|(_, sh)| *sh)
                    .ok_or_else(bad)?;
                (&t[..i], shift)
            }
            _ => (t, 0),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        n.checked_mul(1u64 << shift)
            .map(Size)
            .ok_or_else(|| UnitError(format!("`{s}` is too large")))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 != 0 {
            for (unit, shift) in SIZE_UNITS.iter().rev() {
                let n = 1u64 << shift;
                if self.0.is_multiple_of(n) {
                    return write!(f, "{}{unit}", self.0 / n);
                }
            }
        }
        write!(f, "{}", self.0)
    }
}

macro_rules! string_unit {
    ($t:ty, $name:literal, $pattern:literal, $desc:literal) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                // Accept YAML integers too (`quota: 1024`), then apply the same rules.
                let raw = ScalarText::deserialize(d)?;
                raw.0.parse().map_err(serde::de::Error::custom)
            }
        }
        impl JsonSchema for $t {
            fn schema_name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "pattern": $pattern,
                    "description": $desc,
                })
            }
        }
    };
}

string_unit!(
    Duration,
    "Duration",
    "^([0-9]+[smhdw])+$",
    "A span of time: a number and a unit s, m, h, d (e.g. 30s, 10m, 1h, 7d)."
);
string_unit!(
    Size,
    "Size",
    "^[0-9]+[KMGTPEkmgtpe]?$",
    "A size in bytes with an optional binary unit K, M, G, T, P, E (e.g. 512M, 80T)."
);

/// A YAML scalar read as text whatever its YAML type (`80T`, `1024`, `on`).
pub(crate) struct ScalarText(pub String);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ScalarText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<ScalarText, E> {
                Ok(ScalarText(if v { "on" } else { "off" }.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_canonically() {
        for (text, secs, canon) in [
            ("30s", 30, "30s"),
            ("10m", 600, "10m"),
            ("1h", 3600, "1h"),
            ("7d", 604_800, "7d"),
            ("90m", 5400, "90m"),
            ("1h30m", 5400, "90m"),
            ("24h", 86_400, "1d"),
            ("2w", 1_209_600, "14d"),
            (" 1d12h ", 129_600, "36h"),
        ] {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d.as_secs(), secs, "{text}");
            assert_eq!(d.to_string(), canon, "{text}");
        }
        for bad in [
            "",
            "10",
            "ten minutes",
            "-1h",
            "1x",
            "500ms",
            "1.0001s",
            "1.5h",
            "10M",
            "1H",
            "h",
            "1h30",
            "1 h",
            "3700d",
            "99999999999999999999s",
            "1\u{200b}h",
            "2days",
        ] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sizes_parse_and_print_canonically() {
        for (text, bytes, canon) in [
            ("512M", 512 << 20, "512M"),
            ("80T", 80u64 << 40, "80T"),
            ("1024K", 1 << 20, "1M"),
            ("4096", 4096, "4K"),
            ("100", 100, "100"),
            ("2g", 2 << 30, "2G"),
        ] {
            let s: Size = text.parse().unwrap();
            assert_eq!(s.bytes(), bytes, "{text}");
            assert_eq!(s.to_string(), canon, "{text}");
        }
        for bad in ["", "M", "1.5G", "12Q", "-1M", "99999999999E"] {
            assert!(bad.parse::<Size>().is_err(), "{bad:?} accepted");
        }
    }
}
