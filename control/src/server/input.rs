//! What the control-plane API accepts: JSON bodies (declared as such,
//! bounded), query filters (known values only: an unknown one is a 400,
//! not an empty answer), and free-text fields (bounded in length and
//! without control or bidirectional-formatting characters, so nothing a
//! caller sends can forge lines or hide text in an operator's terminal).

use super::*;

/// Longest revocation reason.
pub(super) const MAX_REASON: usize = 512;

/// 415 unless the body is declared `application/json` (parameters such
/// as `charset` allowed).
fn json_media_type(req: &Request<Incoming>) -> Result<(), Fail> {
    let declared = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim());
    match declared {
        Some(media) if media.eq_ignore_ascii_case("application/json") => Ok(()),
        _ => Err(Fail::new(
            Reason::UnsupportedMediaType,
            "send the body as Content-Type: application/json",
        )),
    }
}

/// A free-text field: at most `max` bytes, no unsafe characters.
pub(super) fn check_text(field: &str, reason: Reason, value: &str, max: usize) -> Result<(), Fail> {
    if value.len() > max {
        return Err(Fail::new(
            reason,
            format!("{field} is {} bytes; at most {max}", value.len()),
        ));
    }
    if let Some(c) = value.chars().find(|c| api::is_unsafe_char(*c)) {
        return Err(Fail::new(
            reason,
            format!(
                "{field} holds the control or formatting character U+{:04X}",
                u32::from(c)
            ),
        ));
    }
    Ok(())
}

/// A sidecar's `instance` (see [`api::is_valid_instance`]).
pub(super) fn check_instance(instance: &str) -> Result<(), Fail> {
    if api::is_valid_instance(instance) {
        Ok(())
    } else {
        Err(Fail::new(
            Reason::BadInstance,
            format!(
                "instance must be at most {} bytes of letters, digits and .-_:/@+",
                api::MAX_INSTANCE
            ),
        ))
    }
}

/// A label: key 1-63 bytes of letters, digits and `.-_/`; value free text
/// of at most 255 bytes.
pub(super) fn check_label(key: &str, value: &str) -> Result<(), Fail> {
    let key_ok = !key.is_empty()
        && key.len() <= 63
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_/".contains(&b));
    if !key_ok {
        return Err(Fail::new(
            Reason::BadLabel,
            format!(
                "label key {:?}: 1-63 bytes of letters, digits and .-_/",
                key.escape_debug().to_string()
            ),
        ));
    }
    check_text("label", Reason::BadLabel, value, 255)
}

/// A query parameter that must name one of `T`'s values, if present.
pub(super) fn one_of<T: std::str::FromStr<Err = UnknownWord>>(
    params: &BTreeMap<String, String>,
    name: &str,
) -> Result<Option<T>, Fail> {
    let Some(v) = params.get(name) else {
        return Ok(None);
    };
    v.parse().map(Some).map_err(|UnknownWord(_, allowed)| {
        Fail::new(
            Reason::BadQuery,
            format!(
                "{name}={:?} is not one of {allowed}",
                v.escape_debug().to_string(),
            ),
        )
    })
}

/// A numeric query parameter, if present.
pub(super) fn number<T: std::str::FromStr>(
    params: &BTreeMap<String, String>,
    name: &str,
) -> Result<Option<T>, Fail> {
    params
        .get(name)
        .map(|v| {
            v.parse()
                .map_err(|_| Fail::new(Reason::BadQuery, format!("{name} must be a number")))
        })
        .transpose()
}

/// Query parameters that are not in `known`: each is a 400.
pub(super) fn only_known(params: &BTreeMap<String, String>, known: &[&str]) -> Result<(), Fail> {
    match params.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(Fail::new(
            Reason::BadQuery,
            format!(
                "unknown query parameter {:?}; known: {}",
                k.escape_debug().to_string(),
                known.join(", ")
            ),
        )),
    }
}

/// How much of an oversized body is read and thrown away (within
/// `DRAIN_TIME`) before the 413 goes out: a client still sending its body
/// then reads the answer instead of a reset connection.
const DRAIN_MAX: usize = 4 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Reads a JSON body of at most `limit` bytes into `T`: 415 unless it is
/// declared `application/json`, 413 past the limit, 400 if it does not
/// parse or names unknown fields.
pub(super) async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
    limit: usize,
) -> Result<T, Fail> {
    json_media_type(&req)?;
    let too_large = || {
        Fail::new(
            Reason::BodyTooLarge,
            format!("request body exceeds {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > DRAIN_MAX) {
        return Err(too_large());
    }
    let bad_body = |e: hyper::Error| Fail::new(Reason::BadBody, e.to_string());
    let mut body = req.into_body();
    let mut bytes = Vec::new();
    let mut seen = declared.filter(|&n| n > limit).unwrap_or(0);
    while seen <= limit {
        let Some(frame) = body.frame().await else {
            break;
        };
        if let Ok(data) = frame.map_err(bad_body)?.into_data() {
            seen += data.len();
            if seen <= limit {
                bytes.extend_from_slice(&data);
            }
        }
    }
    if seen > limit {
        // Bounded in bytes and time; whatever happens, the answer is 413.
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            let mut drained = 0;
            while drained <= DRAIN_MAX {
                match body.frame().await {
                    Some(Ok(frame)) => drained += frame.data_ref().map_or(0, |d| d.len()),
                    _ => break,
                }
            }
        })
        .await;
        return Err(too_large());
    }
    serde_json::from_slice(&bytes).map_err(|e| Fail::new(Reason::MalformedJson, e.to_string()))
}

pub(super) fn query_params(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (!k.is_empty()).then(|| (k.to_owned(), percent_decode(v)))
        })
        .collect()
}

pub(super) fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}
