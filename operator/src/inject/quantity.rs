//! Kubernetes resource quantities (`100m`, `1.5Gi`, `1e3`), checked before they go into a pod
//! so that a typo in an annotation cannot make the API server reject the pod.
//!
//! The grammar is the API server's:
//! `[+-]? (digits | digits. | digits.digits | .digits) (Ki|Mi|Gi|Ti|Pi|Ei | n|u|m||k|M|G|T|P|E | (e|E)[+-]?digits)`.

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{0:?} is empty")]
    Empty(String),
    #[error("{0:?} does not start with a number")]
    NoNumber(String),
    #[error(
        "{0:?} has an unknown suffix (use m, k, M, G, Ki, Mi, Gi, ... or an exponent such as e3)"
    )]
    Suffix(String),
}

/// The value of a quantity, approximately (enough to compare a request with a limit).
pub fn parse(s: &str) -> Result<f64, QuantityError> {
    if s.is_empty() {
        return Err(QuantityError::Empty(s.to_string()));
    }
    let b = s.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - int_start;
    let mut frac_digits = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let frac_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = i - frac_start;
    }
    if int_digits == 0 && frac_digits == 0 {
        return Err(QuantityError::NoNumber(s.to_string()));
    }
    let number: f64 = s[..i]
        .parse()
        .map_err(|_| QuantityError::NoNumber(s.to_string()))?;
    let factor = suffix_factor(&s[i..]).ok_or_else(|| QuantityError::Suffix(s.to_string()))?;
    Ok(number * factor)
}

fn suffix_factor(suffix: &str) -> Option<f64> {
    let binary = |n: i32| Some(1024f64.powi(n));
    let decimal = |n: i32| Some(10f64.powi(n));
    match suffix {
        "Ki" => binary(1),
        "Mi" => binary(2),
        "Gi" => binary(3),
        "Ti" => binary(4),
        "Pi" => binary(5),
        "Ei" => binary(6),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "" => decimal(0),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        _ => {
            let exp = suffix.strip_prefix(['e', 'E'])?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            decimal(exp.parse().ok()?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_quantities() {
        for (s, v) in [
            ("100m", 0.1),
            ("1", 1.0),
            ("0.5", 0.5),
            (".5", 0.5),
            ("1.", 1.0),
            ("+2", 2.0),
            ("128Mi", 128.0 * 1024.0 * 1024.0),
            ("1Gi", 1024.0 * 1024.0 * 1024.0),
            ("1.5Gi", 1.5 * 1024.0 * 1024.0 * 1024.0),
            ("2k", 2000.0),
            ("1M", 1e6),
            ("1e3", 1000.0),
            ("1E-3", 0.001),
            ("1E", 1e18),
            ("500u", 0.0005),
        ] {
            let got = parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert!((got - v).abs() <= v.abs() * 1e-12, "{s}: {got} != {v}");
        }
    }

    #[test]
    fn invalid_quantities() {
        for s in [
            "", "abc", "1MB", "1 Mi", "Mi", "1mi", "1.2.3", "1e", "1e+", "0.5cpu", "-", ".", "1ki",
        ] {
            assert!(parse(s).is_err(), "{s:?} must be refused");
        }
    }
}
