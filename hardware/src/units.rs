//! Physical quantities as types.
//!
//! Every quantity that crosses a crate boundary carries its unit in its type: [`Bytes`],
//! [`Seconds`], [`Nanos`], [`Bandwidth`] (bytes per second), [`Flops`] and [`FlopRate`].
//! In TOML files they are written as strings with a unit (`"32 GiB"`, `"100 Gbit/s"`,
//! `"1.5 us"`, `"256 TFLOP/s"`) or as plain numbers in the base unit (bytes, seconds,
//! bytes per second, FLOP/s). JSON output always uses plain base-unit numbers.

use std::fmt;
use std::ops::{Add, AddAssign, Div, Mul, Sub};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A parse failure for a quantity with a unit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cannot read {text:?} as {what}: {reason} (examples: {examples})")]
pub struct UnitError {
    /// The text that was given.
    pub text: String,
    /// What kind of quantity was expected.
    pub what: &'static str,
    /// Why it failed.
    pub reason: String,
    /// Examples of valid input.
    pub examples: &'static str,
}

/// Splits `"12.5 GB/s"` into `(12.5, "GB/s")`; the number must be finite and not negative.
fn split_number(
    text: &str,
    what: &'static str,
    examples: &'static str,
) -> Result<(f64, String), UnitError> {
    let err = |reason: String| UnitError {
        text: text.to_string(),
        what,
        reason,
        examples,
    };
    let t = text.trim();
    let end = t
        .char_indices()
        .find(|&(_, c)| {
            !(c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-')
        })
        .map_or(t.len(), |(i, _)| i);
    let (num, unit) = t.split_at(end);
    let value: f64 = num
        .parse()
        .map_err(|_| err(format!("{num:?} is not a number")))?;
    if !value.is_finite() {
        return Err(err("the number is not finite".into()));
    }
    if value < 0.0 {
        return Err(err("the value is negative".into()));
    }
    Ok((value, unit.trim().to_string()))
}

macro_rules! impl_f64_quantity_ops {
    ($t:ident) => {
        impl Add for $t {
            type Output = $t;
            fn add(self, o: $t) -> $t {
                $t(self.0 + o.0)
            }
        }
        impl AddAssign for $t {
            fn add_assign(&mut self, o: $t) {
                self.0 += o.0;
            }
        }
        impl Sub for $t {
            type Output = $t;
            fn sub(self, o: $t) -> $t {
                $t(self.0 - o.0)
            }
        }
        impl Mul<f64> for $t {
            type Output = $t;
            fn mul(self, k: f64) -> $t {
                $t(self.0 * k)
            }
        }
        impl Div<f64> for $t {
            type Output = $t;
            fn div(self, k: f64) -> $t {
                $t(self.0 / k)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_f64(self.0)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    N(f64),
                    S(String),
                }
                match Raw::deserialize(d)? {
                    Raw::N(v) if v.is_finite() && v >= 0.0 => Ok($t(v)),
                    Raw::N(v) => Err(serde::de::Error::custom(format!(
                        "{} must be a finite, non-negative number, got {v}",
                        stringify!($t)
                    ))),
                    Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
                }
            }
        }
    };
}

/// A number of bytes (exact, integer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bytes(pub u64);

impl Bytes {
    /// One gibibyte (2^30 bytes).
    pub const GIB: Bytes = Bytes(1 << 30);
    /// The value as a float, for rate arithmetic.
    pub fn as_f64(self) -> f64 {
        self.0 as f64
    }
    /// The value in gigabytes (10^9 bytes).
    pub fn gb(self) -> f64 {
        self.0 as f64 / 1e9
    }
    /// The value in gibibytes (2^30 bytes).
    pub fn gib(self) -> f64 {
        self.0 as f64 / (1u64 << 30) as f64
    }
    /// Rounds a non-negative float number of bytes up to whole bytes.
    pub fn from_f64_ceil(v: f64) -> Bytes {
        Bytes(v.max(0.0).ceil() as u64)
    }
    /// Saturating subtraction.
    pub fn saturating_sub(self, o: Bytes) -> Bytes {
        Bytes(self.0.saturating_sub(o.0))
    }
}

impl Add for Bytes {
    type Output = Bytes;
    fn add(self, o: Bytes) -> Bytes {
        Bytes(self.0 + o.0)
    }
}
impl AddAssign for Bytes {
    fn add_assign(&mut self, o: Bytes) {
        self.0 += o.0;
    }
}
impl Mul<u64> for Bytes {
    type Output = Bytes;
    fn mul(self, k: u64) -> Bytes {
        Bytes(self.0 * k)
    }
}
impl std::iter::Sum for Bytes {
    fn sum<I: Iterator<Item = Bytes>>(iter: I) -> Bytes {
        Bytes(iter.map(|b| b.0).sum())
    }
}

impl fmt::Display for Bytes {
    /// Binary units (GiB, MiB, KiB), as memory is sold and allocated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0 as f64;
        const K: f64 = 1024.0;
        if v >= K * K * K {
            write!(f, "{:.2} GiB", v / (K * K * K))
        } else if v >= K * K {
            write!(f, "{:.2} MiB", v / (K * K))
        } else if v >= K {
            write!(f, "{:.2} KiB", v / K)
        } else {
            write!(f, "{} B", self.0)
        }
    }
}

impl std::str::FromStr for Bytes {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        const EX: &str = "\"32 GiB\", \"40 GB\", \"512 MiB\", \"4096\"";
        let (v, unit) = split_number(s, "a size in bytes", EX)?;
        let k = match unit.as_str() {
            "" | "B" => 1.0,
            "kB" | "KB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            "TB" => 1e12,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => (1u64 << 30) as f64,
            "TiB" => (1u64 << 40) as f64,
            u => {
                return Err(UnitError {
                    text: s.into(),
                    what: "a size in bytes",
                    reason: format!("unknown unit {u:?}"),
                    examples: EX,
                })
            }
        };
        Ok(Bytes((v * k).round() as u64))
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}
impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            I(u64),
            F(f64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::I(v) => Ok(Bytes(v)),
            Raw::F(v) if v.is_finite() && v >= 0.0 => Ok(Bytes(v.round() as u64)),
            Raw::F(v) => Err(serde::de::Error::custom(format!(
                "a size in bytes must be finite and non-negative, got {v}"
            ))),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A duration in seconds (floating point, for model arithmetic and reports).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Seconds(pub f64);
impl_f64_quantity_ops!(Seconds);

impl Seconds {
    /// Converts to integer nanoseconds, rounding to nearest.
    pub fn to_nanos(self) -> Nanos {
        Nanos((self.0 * 1e9).round().max(0.0) as u64)
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v >= 1.0 {
            write!(f, "{v:.3} s")
        } else if v >= 1e-3 {
            write!(f, "{:.3} ms", v * 1e3)
        } else if v >= 1e-6 {
            write!(f, "{:.3} us", v * 1e6)
        } else {
            write!(f, "{:.1} ns", v * 1e9)
        }
    }
}

impl std::str::FromStr for Seconds {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        const EX: &str = "\"1.5 us\", \"2 ms\", \"500 ns\", \"0.001\"";
        let (v, unit) = split_number(s, "a duration", EX)?;
        let k = match unit.as_str() {
            "" | "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            u => {
                return Err(UnitError {
                    text: s.into(),
                    what: "a duration",
                    reason: format!("unknown unit {u:?}"),
                    examples: EX,
                })
            }
        };
        Ok(Seconds(v * k))
    }
}

/// Integer simulation time in nanoseconds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Nanos(pub u64);

impl Nanos {
    /// The value in seconds.
    pub fn seconds(self) -> Seconds {
        Seconds(self.0 as f64 * 1e-9)
    }
}

/// A data rate in bytes per second.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Bandwidth(pub f64);
impl_f64_quantity_ops!(Bandwidth);

impl Bandwidth {
    /// Time to move `bytes` at this rate (infinite for a zero rate).
    pub fn time_for(self, bytes: Bytes) -> Seconds {
        Seconds(bytes.as_f64() / self.0)
    }
    /// Gigabytes per second (10^9 bytes/s).
    pub fn gb_per_s(self) -> f64 {
        self.0 / 1e9
    }
}

impl fmt::Display for Bandwidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1} GB/s", self.0 / 1e9)
    }
}

impl std::str::FromStr for Bandwidth {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        const EX: &str = "\"30 GB/s\", \"100 Gbit/s\", \"1.2 TB/s\"";
        let (v, unit) = split_number(s, "a bandwidth", EX)?;
        let k = match unit.as_str() {
            "" | "B/s" => 1.0,
            "MB/s" => 1e6,
            "GB/s" => 1e9,
            "TB/s" => 1e12,
            "Mbit/s" | "Mb/s" => 1e6 / 8.0,
            "Gbit/s" | "Gb/s" => 1e9 / 8.0,
            "Tbit/s" | "Tb/s" => 1e12 / 8.0,
            u => {
                return Err(UnitError {
                    text: s.into(),
                    what: "a bandwidth",
                    reason: format!("unknown unit {u:?}"),
                    examples: EX,
                })
            }
        };
        Ok(Bandwidth(v * k))
    }
}

/// An amount of floating-point work (FLOPs, not a rate).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Flops(pub f64);
impl_f64_quantity_ops!(Flops);

impl std::iter::Sum for Flops {
    fn sum<I: Iterator<Item = Flops>>(iter: I) -> Flops {
        Flops(iter.map(|f| f.0).sum())
    }
}

impl std::str::FromStr for Flops {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let (v, unit) = split_number(s, "an amount of work", "\"1e12\", \"3 TFLOP\"")?;
        let k = match unit.as_str() {
            "" | "FLOP" => 1.0,
            "GFLOP" => 1e9,
            "TFLOP" => 1e12,
            "PFLOP" => 1e15,
            u => {
                return Err(UnitError {
                    text: s.into(),
                    what: "an amount of work",
                    reason: format!("unknown unit {u:?}"),
                    examples: "\"1e12\", \"3 TFLOP\"",
                })
            }
        };
        Ok(Flops(v * k))
    }
}

/// A compute rate in floating-point operations per second.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct FlopRate(pub f64);
impl_f64_quantity_ops!(FlopRate);

impl FlopRate {
    /// Time to do `work` at this rate.
    pub fn time_for(self, work: Flops) -> Seconds {
        Seconds(work.0 / self.0)
    }
    /// TFLOP/s.
    pub fn tflops(self) -> f64 {
        self.0 / 1e12
    }
}

impl fmt::Display for FlopRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1} TFLOP/s", self.0 / 1e12)
    }
}

impl std::str::FromStr for FlopRate {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        const EX: &str = "\"256 TFLOP/s\", \"115 GFLOP/s\"";
        let (v, unit) = split_number(s, "a compute rate", EX)?;
        let k = match unit.as_str() {
            "" | "FLOP/s" => 1.0,
            "GFLOP/s" => 1e9,
            "TFLOP/s" => 1e12,
            "PFLOP/s" => 1e15,
            u => {
                return Err(UnitError {
                    text: s.into(),
                    what: "a compute rate",
                    reason: format!("unknown unit {u:?}"),
                    examples: EX,
                })
            }
        };
        Ok(FlopRate(v * k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_with_units() {
        assert_eq!("32 GiB".parse::<Bytes>().unwrap(), Bytes(32 << 30));
        assert_eq!("40GB".parse::<Bytes>().unwrap(), Bytes(40_000_000_000));
        assert_eq!("4096".parse::<Bytes>().unwrap(), Bytes(4096));
        assert!("12 parsecs".parse::<Bytes>().is_err());
        assert!("-1 GB".parse::<Bytes>().is_err());
        assert!("NaN GB".parse::<Bytes>().is_err());
    }

    #[test]
    fn parses_rates_and_durations() {
        assert_eq!(
            "100 Gbit/s".parse::<Bandwidth>().unwrap(),
            Bandwidth(12.5e9)
        );
        assert_eq!("30 GB/s".parse::<Bandwidth>().unwrap(), Bandwidth(30e9));
        assert!(("1.5 us".parse::<Seconds>().unwrap().0 - 1.5e-6).abs() < 1e-18);
        assert_eq!("256 TFLOP/s".parse::<FlopRate>().unwrap(), FlopRate(256e12));
        let e = "3 furlongs/s".parse::<Bandwidth>().unwrap_err().to_string();
        assert!(e.contains("furlongs") && e.contains("GB/s"), "{e}");
    }

    #[test]
    fn toml_accepts_strings_and_numbers_and_rejects_nan() {
        #[derive(Deserialize)]
        struct T {
            a: Bytes,
            b: Bandwidth,
        }
        let t: T = toml::from_str("a = \"1 KiB\"\nb = 5.0").unwrap();
        assert_eq!(t.a, Bytes(1024));
        assert_eq!(t.b, Bandwidth(5.0));
        let e = toml::from_str::<T>("a = 1\nb = nan")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("finite"), "{e}");
    }

    #[test]
    fn time_for_bytes() {
        let t = Bandwidth(1e9).time_for(Bytes(1_000_000));
        assert!((t.0 - 1e-3).abs() < 1e-15);
        assert_eq!(Seconds(1.5e-6).to_nanos(), Nanos(1500));
    }
}
