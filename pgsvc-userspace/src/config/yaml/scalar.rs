//! Plain scalars resolved as YAML 1.1 (PyYAML, and so Ansible) does: `yes`/`on` are booleans,
//! `0755` is octal, `1e3` is a string.

use yaml_rust2::parser::Tag;
use yaml_rust2::scanner::TScalarStyle;

use super::Value;

/// YAML 1.1 resolution of a scalar, as PyYAML (and so Ansible) does it.
pub(super) fn resolve_scalar(text: String, style: TScalarStyle, tag: Option<&Tag>) -> Value {
    if let Some(tag) = tag {
        // `!!str`, and Ansible's `!unsafe`/`!vault`, keep the text; other core tags resolve as usual.
        let core = tag.handle == "tag:yaml.org,2002:" || tag.handle == "!!";
        if !core || !matches!(tag.suffix.as_str(), "int" | "float" | "bool" | "null") {
            return Value::Str(text);
        }
    } else if style != TScalarStyle::Plain {
        return Value::Str(text);
    }
    if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL") {
        return Value::Null;
    }
    match text.as_str() {
        "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => {
            return Value::Bool(true);
        }
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => {
            return Value::Bool(false);
        }
        _ => {}
    }
    if let Some(i) = parse_yaml11_int(&text) {
        return Value::Int(i);
    }
    if let Some(f) = parse_yaml11_float(&text) {
        return Value::Float(f);
    }
    Value::Str(text)
}

fn split_sign(text: &str) -> (bool, &str) {
    match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    }
}

fn parse_yaml11_int(text: &str) -> Option<i64> {
    let (negative, body) = split_sign(text);
    let (radix, digits) = if let Some(hex) = body.strip_prefix("0x") {
        (16, hex)
    } else if let Some(bin) = body.strip_prefix("0b") {
        (2, bin)
    } else if body.len() > 1 && body.starts_with('0') {
        (8, &body[1..])
    } else {
        (10, body)
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || !digits.chars().all(|c| c == '_' || c.is_digit(radix))
    {
        return None;
    }
    let cleaned: String = digits.chars().filter(|&c| c != '_').collect();
    let magnitude = i64::from_str_radix(&cleaned, radix).ok()?;
    Some(if negative { -magnitude } else { magnitude })
}

fn parse_yaml11_float(text: &str) -> Option<f64> {
    let (negative, body) = split_sign(text);
    let sign = if negative { -1.0 } else { 1.0 };
    match body {
        ".inf" | ".Inf" | ".INF" => return Some(sign * f64::INFINITY),
        ".nan" | ".NaN" | ".NAN" if text == body => return Some(f64::NAN),
        _ => {}
    }
    // PyYAML 1.1 floats need a dot: `1e3` stays a string, `198.18.0.1` is not a number.
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (int_part, frac_part) = mantissa.split_once('.')?;
    let digits_ok = |s: &str| s.chars().all(|c| c.is_ascii_digit() || c == '_');
    if !digits_ok(int_part) || !digits_ok(frac_part) || int_part.starts_with('_') {
        return None;
    }
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if let Some(exp) = exponent {
        let (_, exp_digits) = split_sign(exp);
        if !exp.starts_with(['+', '-']) || exp_digits.is_empty() || !digits_ok(exp_digits) {
            return None;
        }
    }
    let cleaned: String = body.chars().filter(|&c| c != '_').collect();
    cleaned.parse::<f64>().ok().map(|f| sign * f)
}
