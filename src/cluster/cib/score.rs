//! Pacemaker scores: integers clamped to ±INFINITY (1 000 000) with Pacemaker's addition rules.
//!
//! - any value beyond ±1 000 000 is ±INFINITY;
//! - `-INFINITY` absorbs everything: `INFINITY + -INFINITY = -INFINITY` (a ban beats a
//!   preference, as in `pcmk__add_scores`);
//! - otherwise `INFINITY` absorbs every finite value;
//! - finite sums are clamped.
//!
//! Text forms (crm shell, CIB XML): `INFINITY`, `+INFINITY`, `-INFINITY`, `inf`, `+inf`, `-inf`
//! (any case) and decimal integers. JSON: a number when finite, the string `"INFINITY"` or
//! `"-INFINITY"` otherwise.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::ops::{Add, AddAssign, Neg};
use std::str::FromStr;

/// The magnitude Pacemaker treats as infinite.
pub const INFINITY: i64 = 1_000_000;

/// A placement/colocation/stickiness score, always in `-INFINITY..=INFINITY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Score(i64);

impl Score {
    pub const ZERO: Score = Score(0);
    pub const INFINITY: Score = Score(INFINITY);
    pub const NEG_INFINITY: Score = Score(-INFINITY);

    /// Clamps `v` to `±INFINITY`.
    pub const fn new(v: i64) -> Score {
        if v >= INFINITY {
            Score(INFINITY)
        } else if v <= -INFINITY {
            Score(-INFINITY)
        } else {
            Score(v)
        }
    }

    pub const fn value(self) -> i64 {
        self.0
    }

    pub const fn is_infinite(self) -> bool {
        self.0 == INFINITY || self.0 == -INFINITY
    }

    pub const fn is_pos_infinity(self) -> bool {
        self.0 == INFINITY
    }

    pub const fn is_neg_infinity(self) -> bool {
        self.0 == -INFINITY
    }
}

impl Add for Score {
    type Output = Score;
    fn add(self, o: Score) -> Score {
        if self.is_neg_infinity() || o.is_neg_infinity() {
            Score::NEG_INFINITY
        } else if self.is_pos_infinity() || o.is_pos_infinity() {
            Score::INFINITY
        } else {
            // Both are within ±1e6, so the sum cannot overflow.
            Score::new(self.0 + o.0)
        }
    }
}

impl AddAssign for Score {
    fn add_assign(&mut self, o: Score) {
        *self = *self + o;
    }
}

impl Neg for Score {
    type Output = Score;
    fn neg(self) -> Score {
        Score(-self.0)
    }
}

impl std::iter::Sum for Score {
    fn sum<I: Iterator<Item = Score>>(iter: I) -> Score {
        iter.fold(Score::ZERO, |a, b| a + b)
    }
}

impl From<i64> for Score {
    fn from(v: i64) -> Score {
        Score::new(v)
    }
}

impl FromStr for Score {
    type Err = String;
    fn from_str(s: &str) -> Result<Score, String> {
        let t = s.trim();
        let (neg, body) = match t.as_bytes().first() {
            Some(b'-') => (true, &t[1..]),
            Some(b'+') => (false, &t[1..]),
            _ => (false, t),
        };
        if body.eq_ignore_ascii_case("infinity") || body.eq_ignore_ascii_case("inf") {
            return Ok(if neg { Score::NEG_INFINITY } else { Score::INFINITY });
        }
        if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "{s:?} is not a score: expected an integer, INFINITY or -INFINITY"
            ));
        }
        // Anything with more digits than fits is infinite anyway.
        let v: i64 = body.parse().unwrap_or(i64::MAX);
        Ok(Score::new(if neg { -v } else { v }))
    }
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            INFINITY => f.write_str("INFINITY"),
            v if v == -INFINITY => f.write_str("-INFINITY"),
            v => write!(f, "{v}"),
        }
    }
}

impl Serialize for Score {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.is_infinite() {
            s.serialize_str(&self.to_string())
        } else {
            s.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Score {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Score, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Score;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer score, \"INFINITY\" or \"-INFINITY\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Score, E> {
                Ok(Score::new(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Score, E> {
                Ok(Score::new(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Score, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Score {
        v.parse().unwrap()
    }

    #[test]
    fn addition_follows_pacemaker() {
        // (a, b, a+b), as pcmk__add_scores.
        let cases = [
            ("1", "2", "3"),
            ("INFINITY", "-INFINITY", "-INFINITY"),
            ("-INFINITY", "INFINITY", "-INFINITY"),
            ("INFINITY", "-999999", "INFINITY"),
            ("-INFINITY", "999999", "-INFINITY"),
            ("INFINITY", "INFINITY", "INFINITY"),
            ("999999", "1", "INFINITY"),
            ("600000", "600000", "INFINITY"),
            ("-600000", "-600000", "-INFINITY"),
            ("-5", "5", "0"),
        ];
        for (a, b, want) in cases {
            assert_eq!(s(a) + s(b), s(want), "{a} + {b}");
            assert_eq!(s(b) + s(a), s(want), "{b} + {a}");
        }
        assert_eq!(
            [s("inf"), s("-inf"), s("5")].into_iter().sum::<Score>(),
            Score::NEG_INFINITY
        );
    }

    #[test]
    fn parse_and_print() {
        for (text, v) in [
            ("inf", INFINITY),
            ("+INFINITY", INFINITY),
            ("-inf", -INFINITY),
            ("-Infinity", -INFINITY),
            ("50", 50),
            ("-50", -50),
            ("+7", 7),
            ("2000000", INFINITY),
            ("-99999999999999999999999", -INFINITY),
        ] {
            assert_eq!(s(text).value(), v, "{text}");
        }
        for bad in ["", "-", "x", "1.5", "in f", "--1"] {
            assert!(bad.parse::<Score>().is_err(), "{bad:?}");
        }
        assert_eq!(Score::INFINITY.to_string(), "INFINITY");
        assert_eq!(Score::NEG_INFINITY.to_string(), "-INFINITY");
        assert_eq!(Score::new(-3).to_string(), "-3");
        assert_eq!(-Score::INFINITY, Score::NEG_INFINITY);
        assert!(Score::NEG_INFINITY < Score::new(-999_999) && Score::new(999_999) < Score::INFINITY);
    }

    #[test]
    fn json_forms() {
        assert_eq!(serde_json::to_string(&Score::new(50)).unwrap(), "50");
        assert_eq!(serde_json::to_string(&Score::INFINITY).unwrap(), "\"INFINITY\"");
        assert_eq!(serde_json::to_string(&Score::NEG_INFINITY).unwrap(), "\"-INFINITY\"");
        for j in ["50", "\"INFINITY\"", "\"-INFINITY\"", "-7"] {
            let v: Score = serde_json::from_str(j).unwrap();
            assert_eq!(serde_json::to_string(&v).unwrap(), j);
        }
        assert_eq!(serde_json::from_str::<Score>("5000000").unwrap(), Score::INFINITY);
        assert!(serde_json::from_str::<Score>("\"lots\"").is_err());
        assert!(serde_json::from_str::<Score>("1.5").is_err());
    }
}
