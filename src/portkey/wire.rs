//! Wire helpers shared by the client and the emulator.
//!
//! * Money and limits are [`Decimal`] in Rust and plain JSON numbers on the wire. Portkey is a
//!   JavaScript service, so every number it sends is an IEEE double; we parse it through its
//!   shortest round-trip text form, which turns `12.37` into exactly `12.37`, never
//!   `12.3699999…`.
//! * [`Nullable`] distinguishes "leave unchanged" (field absent) from "clear" (explicit `null`)
//!   in partial updates (`PUT` bodies).

use std::str::FromStr;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Serialises a decimal as a JSON number: an integer when it has no fraction, otherwise the
/// nearest double (the wire format Portkey uses).
pub fn serialize_decimal<S: Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    let normalized = value.normalize();
    if normalized.scale() == 0
        && let Some(i) = normalized.to_i64()
    {
        return s.serialize_i64(i);
    }
    match normalized.to_f64() {
        Some(f) => s.serialize_f64(f),
        None => Err(serde::ser::Error::custom(format!(
            "decimal {value} cannot be sent as a JSON number"
        ))),
    }
}

/// Parses a JSON number (or a numeric string) into an exact decimal.
pub fn deserialize_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    d.deserialize_any(DecimalVisitor)
}

struct DecimalVisitor;

impl Visitor<'_> for DecimalVisitor {
    type Value = Decimal;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a number")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Decimal, E> {
        decimal_from_f64(v).ok_or_else(|| E::custom(format!("{v} is not a finite number")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Decimal, E> {
        Decimal::from_str(v.trim()).map_err(|_| E::custom(format!("{v:?} is not a number")))
    }
}

/// The exact decimal whose text is the shortest representation of `v` that round-trips.
pub fn decimal_from_f64(v: f64) -> Option<Decimal> {
    if !v.is_finite() {
        return None;
    }
    // Rust's `Display` for f64 prints the shortest round-trip digits and never uses exponents.
    Decimal::from_str(&v.to_string())
        .ok()
        .map(|d| d.normalize())
}

/// `Option<Decimal>` as an optional JSON number (`null` or absent = `None`).
pub mod opt_decimal {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => serialize_decimal(v, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(deserialize_with = "deserialize_decimal")] Decimal);
        Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
    }
}

/// `Decimal` as a JSON number.
pub mod decimal {
    pub use super::deserialize_decimal as deserialize;
    pub use super::serialize_decimal as serialize;
}

/// A field of a partial update: absent (unchanged), explicit `null` (clear) or a value.
///
/// Use with `#[serde(default, skip_serializing_if = "Nullable::is_absent")]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Nullable<T> {
    #[default]
    Absent,
    Null,
    Value(T),
}

impl<T> Nullable<T> {
    pub fn is_absent(&self) -> bool {
        matches!(self, Nullable::Absent)
    }

    pub fn is_present(&self) -> bool {
        !self.is_absent()
    }

    /// `Absent` → `None`; `Null` → `Some(None)`; `Value(v)` → `Some(Some(v))`.
    pub fn as_change(&self) -> Option<Option<&T>> {
        match self {
            Nullable::Absent => None,
            Nullable::Null => Some(None),
            Nullable::Value(v) => Some(Some(v)),
        }
    }

    /// Sets to `Value(v)` for `Some(v)` and to `Null` for `None`.
    pub fn set(value: Option<T>) -> Self {
        match value {
            Some(v) => Nullable::Value(v),
            None => Nullable::Null,
        }
    }
}

impl<T: Serialize> Serialize for Nullable<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            // Only reached when the field lacks `skip_serializing_if`; absent cannot be expressed.
            Nullable::Absent | Nullable::Null => s.serialize_none(),
            Nullable::Value(v) => v.serialize(s),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Nullable<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A missing field never reaches here (it takes `Default`, i.e. Absent).
        Ok(Nullable::set(Option::<T>::deserialize(d)?))
    }
}

/// A decimal that (de)serialises as a JSON number; used inside [`Nullable`] and collections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Number(pub Decimal);

impl Serialize for Number {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_decimal(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_decimal(d).map(Number)
    }
}

impl From<Decimal> for Number {
    fn from(d: Decimal) -> Self {
        Number(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Probe {
        #[serde(with = "decimal")]
        limit: Decimal,
        #[serde(default, skip_serializing_if = "Nullable::is_absent")]
        threshold: Nullable<Number>,
    }

    #[test]
    fn decimals_round_trip_exactly() {
        let p: Probe = serde_json::from_str(r#"{"limit": 12.37}"#).unwrap();
        assert_eq!(p.limit, dec("12.37"));
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"limit":12.37}"#);
        let p: Probe = serde_json::from_str(r#"{"limit": 10.0}"#).unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"limit":10}"#);
        let p: Probe = serde_json::from_str(r#"{"limit": 0.1}"#).unwrap();
        assert_eq!(p.limit.to_string(), "0.1");
    }

    #[test]
    fn nullable_distinguishes_absent_null_and_value() {
        let absent: Probe = serde_json::from_str(r#"{"limit": 1}"#).unwrap();
        assert_eq!(absent.threshold, Nullable::Absent);
        let null: Probe = serde_json::from_str(r#"{"limit": 1, "threshold": null}"#).unwrap();
        assert_eq!(null.threshold, Nullable::Null);
        assert_eq!(
            serde_json::to_string(&null).unwrap(),
            r#"{"limit":1,"threshold":null}"#
        );
        let val: Probe = serde_json::from_str(r#"{"limit": 1, "threshold": 0.5}"#).unwrap();
        assert_eq!(val.threshold, Nullable::Value(Number(dec("0.5"))));
        assert_eq!(serde_json::to_string(&absent).unwrap(), r#"{"limit":1}"#);
    }

    #[test]
    fn rejects_non_numbers() {
        assert!(serde_json::from_str::<Probe>(r#"{"limit": "abc"}"#).is_err());
        assert!(serde_json::from_str::<Probe>(r#"{"limit": true}"#).is_err());
    }
}
