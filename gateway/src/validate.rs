//! Checks of names and resource quantities, shared by the gateway's handlers and the agent.
//!
//! Every function returns a message meant for the API caller: it says what is wrong and what
//! would be right. The caller prefixes it with the JSON field (`service: ...`).

/// Longest function name: bramble builds container, task and network ids from it.
pub const MAX_FUNCTION_NAME: usize = 40;
/// Longest namespace name: bramble builds container and network ids from it.
pub const MAX_NAMESPACE_NAME: usize = 20;
/// Longest secret name.
pub const MAX_SECRET_NAME: usize = 253;
/// Largest memory quantity accepted (1 TiB).
pub const MAX_MEMORY_BYTES: u64 = 1 << 40;
/// Largest CPU quantity accepted (1024 cores), in millicores.
pub const MAX_CPU_MILLIS: u64 = 1024 * 1000;

/// A DNS-1123 label of at most `max` characters.
fn dns_label(kind: &str, name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("a {kind} name is required"));
    }
    if name.len() > max {
        return Err(format!(
            "{kind} name {name:?} is {} characters long; at most {max} are allowed (bramble builds container ids from it)",
            name.len()
        ));
    }
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let alnum = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !valid_chars || !alnum(name.as_bytes().first()) || !alnum(name.as_bytes().last()) {
        return Err(format!(
            "invalid {kind} name {name:?}: use lowercase letters a-z, digits and '-', starting and ending with a letter or digit (a DNS-1123 label; bramble builds container ids from it)"
        ));
    }
    Ok(())
}

/// A function name: a DNS-1123 label of at most [`MAX_FUNCTION_NAME`] characters.
pub fn function_name(name: &str) -> Result<(), String> {
    dns_label("function", name, MAX_FUNCTION_NAME)
}

/// A namespace name: a DNS-1123 label of at most [`MAX_NAMESPACE_NAME`] characters.
pub fn namespace_name(name: &str) -> Result<(), String> {
    dns_label("namespace", name, MAX_NAMESPACE_NAME)
}

/// A secret name: `[a-zA-Z0-9._-]+`, not `.` or `..`, at most [`MAX_SECRET_NAME`] characters
/// (it becomes a file name under `/var/openfaas/secrets/`).
pub fn secret_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a secret name is required".to_owned());
    }
    if name.len() > MAX_SECRET_NAME {
        return Err(format!(
            "secret name is {} characters long; at most {MAX_SECRET_NAME} are allowed",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!(
            "invalid secret name {name:?}: it becomes a file name"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "invalid secret name {name:?}: use letters, digits, '.', '_' and '-' only (it becomes a file name)"
        ));
    }
    Ok(())
}

/// A parsed Kubernetes quantity: `mantissa × 10^exp10 × 2^exp2`.
struct Quantity {
    mantissa: u128,
    exp10: i32,
    exp2: u32,
}

/// Most significant digits kept in a mantissa (u128 holds 38).
const MAX_DIGITS: usize = 30;

fn parse_quantity(q: &str) -> Result<Quantity, String> {
    if q.is_empty() {
        return Err("empty quantity".to_owned());
    }
    if q.trim() != q {
        return Err(format!("quantity {q:?} has surrounding spaces"));
    }
    let (negative, rest) = match q.as_bytes()[0] {
        b'-' => (true, &q[1..]),
        b'+' => (false, &q[1..]),
        _ => (false, q),
    };
    if negative {
        return Err(format!("quantity {q:?} is negative"));
    }
    let number_end = rest
        .bytes()
        .position(|b| !(b.is_ascii_digit() || b == b'.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(format!("quantity {q:?} does not start with a number"));
    }
    if frac_part.contains('.') {
        return Err(format!("quantity {q:?} has more than one decimal point"));
    }
    let digits: String = format!("{int_part}{frac_part}");
    let significant = digits.trim_start_matches('0');
    if significant.len() > MAX_DIGITS {
        return Err(format!("quantity {q:?} has too many digits"));
    }
    let mut mantissa: u128 = 0;
    for b in significant.bytes() {
        mantissa = mantissa * 10 + u128::from(b - b'0');
    }
    let frac_len = i32::try_from(frac_part.len())
        .map_err(|_| format!("quantity {q:?} has too many digits"))?;
    let mut exp10 = -frac_len;
    let mut exp2 = 0;
    match suffix {
        "" => {}
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        s if s.starts_with(['e', 'E']) => {
            let exponent: i32 = s[1..]
                .parse()
                .ok()
                .filter(|e: &i32| e.abs() <= 100)
                .ok_or_else(|| format!("quantity {q:?} has an invalid exponent {s:?}"))?;
            exp10 += exponent;
        }
        s => {
            return Err(format!(
                "quantity {q:?} has an unknown suffix {s:?} (use Ki, Mi, Gi, Ti; k, M, G, T; m; or an exponent like 1e6)"
            ));
        }
    }
    Ok(Quantity {
        mantissa,
        exp10,
        exp2,
    })
}

/// `ceil(quantity × 10^scale10)`, or `None` when it exceeds `max`.
fn scaled_ceil(q: &Quantity, scale10: i32, max: u64) -> Option<u64> {
    let limit = u128::from(max);
    let mut value = q.mantissa.checked_mul(1u128.checked_shl(q.exp2)?)?;
    let exp = q.exp10 + scale10;
    if value == 0 {
        return Some(0);
    }
    if exp >= 0 {
        for _ in 0..exp {
            value = value.checked_mul(10)?;
            if value > limit {
                return None;
            }
        }
    } else {
        // The value is below 10^38 (30 digits × 2^60 fits), so dividing by more than 10^38 gives
        // a fraction that rounds up to 1.
        let divisor_exp = u32::try_from(-exp).ok()?;
        value = if divisor_exp > 38 {
            1
        } else {
            value.div_ceil(10u128.pow(divisor_exp))
        };
    }
    if value > limit {
        None
    } else {
        u64::try_from(value).ok()
    }
}

/// A memory quantity in bytes (`"128Mi"`, `"128M"`, `"1Gi"`, `"100Ki"`, `"1e6"`); fractions of
/// a byte round up. At most [`MAX_MEMORY_BYTES`].
pub fn parse_memory(q: &str) -> Result<u64, String> {
    let quantity = parse_quantity(q)?;
    scaled_ceil(&quantity, 0, MAX_MEMORY_BYTES)
        .ok_or_else(|| format!("memory quantity {q:?} is larger than the maximum of 1Ti"))
}

/// A CPU quantity in millicores (`"500m"` = 500, `"0.5"` = 500, `"2"` = 2000); fractions of a
/// millicore round up. At most [`MAX_CPU_MILLIS`] (1024 cores).
pub fn parse_cpu_millis(q: &str) -> Result<u64, String> {
    let quantity = parse_quantity(q)?;
    scaled_ceil(&quantity, 3, MAX_CPU_MILLIS)
        .ok_or_else(|| format!("cpu quantity {q:?} is larger than the maximum of 1024 cores"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_quantities() {
        let ok = [
            ("128Mi", 128 << 20),
            ("128M", 128_000_000),
            ("1Gi", 1 << 30),
            ("100Ki", 102_400),
            ("1e6", 1_000_000),
            ("1E3", 1000),
            ("0.5Gi", 1 << 29),
            ("1.5", 2),
            ("500m", 1),
            ("0", 0),
            ("+64Mi", 64 << 20),
            ("1Ti", 1 << 40),
            ("1.k", 1000),
            (".5k", 500),
        ];
        for (q, want) in ok {
            assert_eq!(parse_memory(q), Ok(want), "{q}");
        }
        for (q, needle) in [
            ("128Qi", "unknown suffix \"Qi\""),
            ("-1Mi", "negative"),
            ("", "empty"),
            ("2Ti", "maximum"),
            ("1e100", "maximum"),
            ("1e1000", "exponent"),
            ("Mi", "does not start with a number"),
            ("1.2.3", "more than one decimal point"),
            (" 1Mi", "spaces"),
            ("1 Mi", "unknown suffix"),
            ("99999999999999999999999999999999999", "too many digits"),
        ] {
            let err = parse_memory(q).unwrap_err();
            assert!(err.contains(needle), "{q}: {err}");
        }
    }

    #[test]
    fn cpu_quantities() {
        for (q, want) in [
            ("500m", 500),
            ("0.5", 500),
            ("2", 2000),
            ("1024", 1_024_000),
            ("100u", 1),
            ("0.0001", 1),
            ("250000u", 250),
        ] {
            assert_eq!(parse_cpu_millis(q), Ok(want), "{q}");
        }
        assert!(parse_cpu_millis("1025").unwrap_err().contains("1024 cores"));
        assert!(parse_cpu_millis("1e6").unwrap_err().contains("1024 cores"));
        assert!(parse_cpu_millis("-1").unwrap_err().contains("negative"));
        assert!(
            parse_cpu_millis("1x")
                .unwrap_err()
                .contains("unknown suffix")
        );
    }

    #[test]
    fn names() {
        for ok in ["a", "hello", "a-b-1", "0abc", &"x".repeat(40)] {
            assert_eq!(function_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Hello",
            "a_b",
            "-a",
            "a-",
            "a.b",
            "a/b",
            "é",
            &"x".repeat(41),
        ] {
            assert!(function_name(bad).is_err(), "{bad}");
        }
        assert!(
            function_name(&"x".repeat(41))
                .unwrap_err()
                .contains("container ids")
        );
        assert!(function_name("A").unwrap_err().contains("container ids"));
        assert_eq!(namespace_name("openfaas-fn"), Ok(()));
        assert!(
            namespace_name(&"n".repeat(21))
                .unwrap_err()
                .contains("at most 20")
        );
        for ok in ["k", "api-key", "API_KEY.v1", "..a", &"s".repeat(253)] {
            assert_eq!(secret_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "a\0", &"s".repeat(254)] {
            assert!(secret_name(bad).is_err(), "{bad}");
        }
    }
}
