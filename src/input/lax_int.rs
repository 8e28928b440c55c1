//! An integer read as the original's validation (pydantic v2 in lax mode) read an `int`
//! field or query parameter, so that every value the original accepted is accepted, as the
//! same number, and every value it refused is refused with the same error type.
//!
//! The rules, from pydantic 2.6 (`tests/compat/pydantic_cases.py` checks them against
//! pydantic itself):
//! - a JSON integer is itself; `true` and `false` are 1 and 0;
//! - a JSON number with no fractional part is that integer (`100.0`); with one, it is
//!   refused (`int_from_float`), as is one beyond 64 bits (`int_parsing_size`);
//! - a string is read as Python reads an integer literal, with an optional sign and `_`
//!   between digits (`"+1_000"`, and one right after the sign: `"+_1"`), but no surrounding
//!   whitespace; or as a plain integer followed by a point and only zeros (`"100."`,
//!   `"100.000"`, without `_`); a string longer than 4300 characters is refused unread
//!   (`int_parsing_size`, Python's limit on the digits `int()` converts);
//! - anything else (`null`, arrays, objects) is not an integer (`int_type`).

use serde_json::Value;

/// Why a value is not an integer, as pydantic's error type says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAnInt {
    /// Not a number, a boolean or a string.
    Type,
    /// A string that does not spell an integer.
    Parsing,
    /// A number with a fractional part.
    FromFloat,
    /// A number with no fractional part, but beyond 64 bits; a string over 4300 characters.
    ParsingSize,
}

impl NotAnInt {
    pub fn kind(self) -> &'static str {
        match self {
            NotAnInt::Type => "int_type",
            NotAnInt::Parsing => "int_parsing",
            NotAnInt::FromFloat => "int_from_float",
            NotAnInt::ParsingSize => "int_parsing_size",
        }
    }

    pub fn msg(self) -> &'static str {
        match self {
            NotAnInt::Type => "Input should be a valid integer",
            NotAnInt::Parsing => {
                "Input should be a valid integer, unable to parse string as an integer"
            }
            NotAnInt::FromFloat => {
                "Input should be a valid integer, got a number with a fractional part"
            }
            NotAnInt::ParsingSize => {
                "Unable to parse input string as an integer, exceeded maximum size"
            }
        }
    }
}

/// The longest string read as an integer: pydantic refuses a longer one before reading it.
const MAX_INT_STRING: usize = 4300;

/// The integer `value` stands for. Integers beyond `i128` saturate: they are out of any range
/// the service checks either way.
pub fn lax_int(value: &Value) -> Result<i128, NotAnInt> {
    match value {
        Value::Bool(b) => Ok(i128::from(*b)),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Ok(i128::from(i));
            }
            if let Some(u) = n.as_u64() {
                return Ok(i128::from(u));
            }
            let f = n.as_f64().ok_or(NotAnInt::Type)?;
            if f.fract() != 0.0 {
                Err(NotAnInt::FromFloat)
            } else if f.abs() >= i64::MAX as f64 {
                Err(NotAnInt::ParsingSize)
            } else {
                // Exact: a float with no fractional part below 2^63 is an integer in i64.
                Ok(f as i128)
            }
        }
        Value::String(s) if s.len() > MAX_INT_STRING => Err(NotAnInt::ParsingSize),
        Value::String(s) => int_in_str(s).ok_or(NotAnInt::Parsing),
        _ => Err(NotAnInt::Type),
    }
}

/// The integer a string spells (see the module docs).
pub fn int_in_str(text: &str) -> Option<i128> {
    match text.split_once('.') {
        Some((whole, fraction)) => {
            if fraction.bytes().all(|b| b == b'0') {
                digits(whole, false)
            } else {
                None
            }
        }
        None => digits(text, true),
    }
}

/// An optional sign, then decimal digits; with `underscores`, single `_` between digits or
/// right after the sign.
fn digits(text: &str, underscores: bool) -> Option<i128> {
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let signed = rest.len() < text.len();
    let mut magnitude = 0i128;
    // A `_` may follow a digit, or the sign ("+_1" is 1 to pydantic, though not to `int()`).
    let mut previous_was_digit = signed && underscores;
    let mut any = false;
    for b in rest.bytes() {
        match b {
            b'0'..=b'9' => {
                magnitude = magnitude
                    .saturating_mul(10)
                    .saturating_add(i128::from(b - b'0'));
                previous_was_digit = true;
                any = true;
            }
            b'_' if underscores && previous_was_digit => previous_was_digit = false,
            _ => return None,
        }
    }
    (any && previous_was_digit).then_some(if negative { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_as_pydantic_reads_them() {
        for (text, n) in [
            ("100", 100),
            ("+100", 100),
            ("-5", -5),
            ("00100", 100),
            ("1_000", 1000),
            ("0_1", 1),
            ("1_000_000", 1_000_000),
            ("100.", 100),
            ("100.0", 100),
            ("100.000", 100),
            ("0100.0", 100),
            ("+5.0", 5),
            ("-0", 0),
            ("0.0", 0),
            ("+_1", 1),
            ("+_1_0", 10),
            ("-_1", -1),
        ] {
            assert_eq!(int_in_str(text), Some(n), "{text:?}");
        }
        for text in [
            "",
            " ",
            "+",
            "-",
            "+-1",
            " 100",
            "100 ",
            "100\n",
            "\t100",
            "1__000",
            "_100",
            "+__1",
            "+_",
            "+_1.0",
            "100_",
            "1_000.0",
            "100.5",
            "100.0.0",
            ".5",
            ".0",
            "1e3",
            "0x10",
            "１００",
            "1 000",
            "inf",
            "nan",
        ] {
            assert_eq!(int_in_str(text), None, "{text:?}");
        }
        assert_eq!(int_in_str(&"9".repeat(60)), Some(i128::MAX), "saturates");
    }

    #[test]
    fn json_values_as_pydantic_reads_them() {
        assert_eq!(lax_int(&json!(100)), Ok(100));
        assert_eq!(lax_int(&json!(100.0)), Ok(100));
        assert_eq!(lax_int(&json!(true)), Ok(1));
        assert_eq!(lax_int(&json!(false)), Ok(0));
        assert_eq!(lax_int(&json!(u64::MAX)), Ok(i128::from(u64::MAX)));
        assert_eq!(lax_int(&json!(100.5)), Err(NotAnInt::FromFloat));
        assert_eq!(lax_int(&json!(1e20)), Err(NotAnInt::ParsingSize));
        assert_eq!(lax_int(&json!(null)), Err(NotAnInt::Type));
        assert_eq!(lax_int(&json!([1])), Err(NotAnInt::Type));
        assert_eq!(lax_int(&json!("1e3")), Err(NotAnInt::Parsing));
        let longest = format!("{}12", "0".repeat(4298));
        assert_eq!(lax_int(&json!(longest)), Ok(12));
        assert_eq!(
            lax_int(&json!(format!("0{longest}"))),
            Err(NotAnInt::ParsingSize),
            "over 4300 characters, however small the number"
        );
    }
}
