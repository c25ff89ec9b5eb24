//! The deciding half of `cutover health`: URL splitting, HTTP/1.1 response parsing, and the
//! pass/fail verdict of each kind of check from what was measured. No IO, no clock.

use crate::runbook::health::Amount;

/// Where an `http://` or `https://` URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `https://`.
    pub tls: bool,
    /// Host (without brackets for IPv6).
    pub host: String,
    /// Port (80 by default).
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
    /// The `Host` header value.
    pub authority: String,
}

/// Splits `http[s]://host[:port][/path]`.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => return Err(format!("{url:?} is not an http:// or https:// URL")),
    };
    let default_port = if tls { 443 } else { 80 };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed ["))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("{url:?}: bad port"))?,
            None => default_port,
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| format!("{url:?}: bad port"))?,
            ),
            None => (authority.to_string(), default_port),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok(Target {
        tls,
        host,
        port,
        path,
        authority: authority.to_string(),
    })
}

/// The GET request for `target`.
pub fn http_request(target: &Target) -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: cutover-health\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n",
        target.path, target.authority
    )
}

/// A parsed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

/// Parses a complete response (read until the server closed).
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers in the answer")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let (version, status) = (parts.next(), parts.next());
    if !version.is_some_and(|v| v.starts_with("HTTP/")) {
        return Err(format!("not an HTTP answer: {status_line:?}"));
    }
    let status = status
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body)?;
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.truncate(len);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunked body")?;
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

/// What an HTTP check wants.
#[derive(Debug, Clone, Copy)]
pub struct HttpWant<'a> {
    /// The status.
    pub status: u16,
    /// A substring of the body.
    pub body_contains: Option<&'a str>,
    /// A regex the body must match (already compiled).
    pub body_regex: Option<&'a regex::Regex>,
    /// A header name and exact value.
    pub header: Option<(&'a str, &'a str)>,
}

/// Pass (`Ok(detail)`) or fail (`Err(reason)`) of an HTTP answer.
pub fn http_verdict(r: &Response, want: &HttpWant<'_>) -> Result<String, String> {
    if r.status != want.status {
        return Err(format!("status {}, expected {}", r.status, want.status));
    }
    let body = String::from_utf8_lossy(&r.body);
    if let Some(s) = want.body_contains.filter(|s| !body.contains(s)) {
        return Err(format!("status {} but the body lacks {s:?}", r.status));
    }
    if let Some(re) = want.body_regex.filter(|re| !re.is_match(&body)) {
        return Err(format!(
            "status {} but the body does not match /{}/",
            r.status,
            re.as_str()
        ));
    }
    if let Some((name, value)) = want.header {
        match r.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            None => return Err(format!("status {} but no header {name}", r.status)),
            Some((_, v)) if v != value => {
                return Err(format!("header {name}: {v:?}, expected {value:?}"));
            }
            _ => {}
        }
    }
    Ok(format!("status {}, {} body bytes", r.status, r.body.len()))
}

/// `MemAvailable` and `MemTotal` of `/proc/meminfo`, in bytes.
pub fn meminfo(text: &str) -> Result<(u64, u64), String> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .ok_or_else(|| format!("/proc/meminfo has no {name}"))
    };
    Ok((field("MemAvailable")?, field("MemTotal")?))
}

/// Human bytes: `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Pass or fail of `free` out of `total` against the least amount `min`.
pub fn amount_verdict(what: &str, free: u64, total: u64, min: Amount) -> Result<String, String> {
    let percent = if total == 0 {
        0.0
    } else {
        free as f64 * 100.0 / total as f64
    };
    let detail = format!("{what} {} of {} ({percent:.1}%)", bytes(free), bytes(total));
    let ok = match min {
        Amount::Bytes(b) => free >= b,
        Amount::Percent(p) => percent >= p,
    };
    let wanted = match min {
        Amount::Bytes(b) => bytes(b),
        Amount::Percent(p) => format!("{p}%"),
    };
    if ok {
        Ok(detail)
    } else {
        Err(format!("{detail}, wanted at least {wanted}"))
    }
}

/// Pass or fail of a SQL check's first cell.
pub fn sql_verdict(cell: Option<&str>, expect: &str) -> Result<String, String> {
    match cell {
        Some(c) if c == expect => Ok(format!("first cell {c:?}")),
        Some(c) => Err(format!("first cell {c:?}, expected {expect:?}")),
        None => Err(format!("no row (or NULL), expected {expect:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:8080/health?x=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 8080, "/health?x=1")
        );
        let t = parse_url("http://example.test").unwrap();
        assert_eq!(
            (t.port, t.path.as_str(), t.authority.as_str()),
            (80, "/", "example.test")
        );
        let t = parse_url("http://[::1]:81?q").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 81, "/?q")
        );
        let t = parse_url("https://x").unwrap();
        assert_eq!((t.tls, t.port), (true, 443));
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://:80/").is_err());
        assert!(parse_url("http://x:port/").is_err());
    }

    #[test]
    fn responses() {
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Server: old\r\n\r\nokEXTRA")
                .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn http_verdicts() {
        let r = Response {
            status: 200,
            headers: vec![("X-Server".into(), "old".into())],
            body: b"status: ready".to_vec(),
        };
        let re = regex::Regex::new("^status: (ready|up)$").unwrap();
        let bad_re = regex::Regex::new("down").unwrap();
        let want = |status, contains, regex, header| HttpWant {
            status,
            body_contains: contains,
            body_regex: regex,
            header,
        };
        assert!(
            http_verdict(
                &r,
                &want(200, Some("ready"), Some(&re), Some(("x-server", "old")))
            )
            .is_ok()
        );
        let cases = [
            (want(204, None, None, None), "status 200, expected 204"),
            (want(200, Some("nope"), None, None), "lacks \"nope\""),
            (
                want(200, None, Some(&bad_re), None),
                "does not match /down/",
            ),
            (
                want(200, None, None, Some(("X-Other", "1"))),
                "no header X-Other",
            ),
            (
                want(200, None, None, Some(("X-Server", "new"))),
                "\"old\", expected \"new\"",
            ),
        ];
        for (w, reason) in cases {
            let err = http_verdict(&r, &w).unwrap_err();
            assert!(err.contains(reason), "{err} lacks {reason}");
        }
    }

    #[test]
    fn amounts_and_memory() {
        assert!(amount_verdict("free", 50, 100, Amount::Percent(50.0)).is_ok());
        assert!(amount_verdict("free", 49, 100, Amount::Percent(50.0)).is_err());
        assert!(amount_verdict("free", 1 << 30, 1 << 40, Amount::Bytes(1 << 30)).is_ok());
        let err = amount_verdict("free", 1 << 20, 1 << 30, Amount::Bytes(1 << 30)).unwrap_err();
        assert_eq!(
            err,
            "free 1.0 MiB of 1.0 GiB (0.1%), wanted at least 1.0 GiB"
        );
        assert!(amount_verdict("free", 0, 0, Amount::Percent(1.0)).is_err());
        let text = "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   12000000 kB\n";
        assert_eq!(
            meminfo(text).unwrap(),
            (12_000_000 * 1024, 24_000_000 * 1024)
        );
        assert!(meminfo("MemTotal: 1 kB\n").is_err());
        assert_eq!(sql_verdict(Some("1"), "1"), Ok("first cell \"1\"".into()));
        assert!(sql_verdict(Some("2"), "1").is_err());
        assert!(sql_verdict(None, "1").is_err());
    }
}
