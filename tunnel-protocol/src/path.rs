//! What the relay guarantees about the path a backend receives, checked the same way by the relay
//! (before a stream opens) and by the connector (before it calls a backend).
//!
//! The guarantee: **the path, decoded the way common servers decode it, never climbs above the
//! target's root**, and a dot-segment that only appears after decoding is refused instead of being
//! forwarded. "The way common servers decode it" is the union of what they do:
//! - percent-decoding, applied repeatedly (some stacks decode twice: `%252e` → `%2e` → `.`),
//!   and IIS's `%uXXXX`;
//! - `\` as a separator (IIS, ASP.NET, other Windows servers);
//! - overlong UTF-8 for `.`, `/` and `\` (`%c0%ae`, `%c0%af`, `%c1%9c`: old decoders);
//! - Unicode compatibility forms that NFKC turns into dots or separators (`．` U+FF0E, `／` U+FF0F,
//!   `＼` U+FF3C, `‥` U+2025, …);
//! - `;parameters` cut from a segment (Tomcat and Jetty read `..;` as `..`).
//!
//! A path passes when its literal dot-segments (`.` and `..` between `/`, which every server and
//! every client treats alike) stay below the root, and that decoded view shows no other
//! dot-segment. Encoded separators on their own (`/a%2Fb`) are not dot-segments and pass
//! unchanged: the backend receives the path byte for byte as the visitor sent it. NUL, CR and LF
//! are refused in any encoding. The query is not looked at.

use std::fmt;

/// Why a path is refused. Every variant is the visitor's fault: 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// Dot-segments climb above the root.
    ClimbsOut,
    /// A dot-segment appears only once the path is decoded (`%2e%2e`, `..%2f`, `..\`, `..;`).
    EncodedDotSegment,
    /// Still percent-encoded after [`MAX_DECODE_ROUNDS`] rounds of decoding.
    TooDeeplyEncoded,
    /// NUL, CR or LF, in any encoding.
    ControlCharacter,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotAbsolute => "the path does not start with /",
            Self::ClimbsOut => "dot-segments climb above the target's root",
            Self::EncodedDotSegment => "an encoded dot-segment or separator forms a dot-segment",
            Self::TooDeeplyEncoded => "the path is percent-encoded too many times over",
            Self::ControlCharacter => "the path holds NUL, CR or LF",
        })
    }
}

impl std::error::Error for PathError {}

/// How many rounds of percent-decoding the decoded view applies; a path still encoded after
/// that is refused rather than guessed at.
pub const MAX_DECODE_ROUNDS: usize = 3;

/// Checks a request path (without its query) against the guarantee in the module docs.
pub fn check(path: &str) -> Result<(), PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let literal_dots = dot_segments(path.as_bytes(), false)?;
    // Most paths hold nothing a server would decode: then the literal view is the decoded view.
    let plain = path
        .bytes()
        .all(|b| b.is_ascii() && !matches!(b, b'%' | b'\\' | b';'));
    if plain {
        return Ok(());
    }
    let decoded = decoded_view(path.as_bytes())?;
    if dot_segments(&decoded, true)? != literal_dots {
        return Err(PathError::EncodedDotSegment);
    }
    Ok(())
}

/// Counts the dot-segments of `path` (split on `/`), failing when they climb above the root.
/// With `params`, a segment's `;parameters` are cut before it is compared.
fn dot_segments(path: &[u8], params: bool) -> Result<usize, PathError> {
    let mut depth: i64 = 0;
    let mut dots = 0;
    for seg in path.split(|&b| b == b'/').skip(1) {
        let seg = match params {
            true => seg.split(|&b| b == b';').next().unwrap_or(seg),
            false => seg,
        };
        match seg {
            b"" | b"." => dots += usize::from(!seg.is_empty()),
            b".." => {
                dots += 1;
                depth -= 1;
                if depth < 0 {
                    return Err(PathError::ClimbsOut);
                }
            }
            _ => depth += 1,
        }
    }
    Ok(dots)
}

/// The path as the most generous common server would see it: decoded up to
/// [`MAX_DECODE_ROUNDS`] times, with every alternative spelling of `.`, `/` and `\` folded to
/// `.` and `/`.
fn decoded_view(path: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut bytes = path.to_vec();
    let mut rounds = 0;
    while let Some(next) = percent_decode(&bytes) {
        if rounds == MAX_DECODE_ROUNDS {
            return Err(PathError::TooDeeplyEncoded);
        }
        bytes = next;
        rounds += 1;
    }
    let folded = fold(&bytes);
    if folded.iter().any(|b| matches!(b, 0 | b'\r' | b'\n')) {
        return Err(PathError::ControlCharacter);
    }
    Ok(folded)
}

/// One round of percent-decoding (`%XX`, and IIS's `%uXXXX` as UTF-8), or `None` when there is
/// nothing to decode.
fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut changed = false;
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            if let Some(b) = input.get(i + 1..i + 3).and_then(hex) {
                out.push(b);
                i += 3;
                changed = true;
                continue;
            }
            let wide = input
                .get(i + 1)
                .is_some_and(|u| u.eq_ignore_ascii_case(&b'u'));
            if let Some(c) = input
                .get(i + 2..i + 6)
                .filter(|_| wide)
                .and_then(|h| Some(u32::from(hex(&h[..2])?) << 8 | u32::from(hex(&h[2..])?)))
                .and_then(char::from_u32)
            {
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                i += 6;
                changed = true;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    changed.then_some(out)
}

fn hex(pair: &[u8]) -> Option<u8> {
    let digit = |b: u8| (b as char).to_digit(16);
    match pair {
        [hi, lo] => Some((digit(*hi)? * 16 + digit(*lo)?) as u8),
        _ => None,
    }
}

/// Folds every spelling of `.`, `/` and `\` that some server reads as one into `.` and `/`.
fn fold(bytes: &[u8]) -> Vec<u8> {
    /// Byte sequences and what a lenient decoder makes of them, longest first.
    const ALIASES: &[(&[u8], &[u8])] = &[
        (b"\xf0\x80\x80\xae", b"."), // overlong UTF-8
        (b"\xf0\x80\x80\xaf", b"/"),
        (b"\xf0\x80\x81\x9c", b"/"),
        (b"\xe0\x80\xae", b"."),
        (b"\xe0\x80\xaf", b"/"),
        (b"\xe0\x81\x9c", b"/"),
        (b"\xef\xbc\x8e", b"."),  // U+FF0E fullwidth full stop
        (b"\xef\xbc\x8f", b"/"),  // U+FF0F fullwidth solidus
        (b"\xef\xbc\xbc", b"/"),  // U+FF3C fullwidth reverse solidus
        (b"\xef\xb9\x92", b"."),  // U+FE52 small full stop
        (b"\xef\xb9\xa8", b"/"),  // U+FE68 small reverse solidus
        (b"\xe2\x80\xa4", b"."),  // U+2024 one dot leader
        (b"\xe2\x80\xa5", b".."), // U+2025 two dot leader
        (b"\xc0\xae", b"."),
        (b"\xc0\xaf", b"/"),
        (b"\xc1\x9c", b"/"),
        (b"\\", b"/"),
    ];
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    'outer: while i < bytes.len() {
        for (from, to) in ALIASES {
            if bytes[i..].starts_with(from) {
                out.extend_from_slice(to);
                i += from.len();
                continue 'outer;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_paths_pass_unchanged() {
        for ok in [
            "/",
            "/a/b.html",
            "/x/../y",
            "/./a",
            "/a/..",
            "/x%2Fy",
            "/a%5Cb",
            "/files/100%25",
            "/a;jsessionid=1/b",
            "/caf%C3%A9",
            "/...",
            "/..a/b..",
            "/%2e%2ea",
            "/a\\b",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn every_spelling_of_a_climb_is_refused() {
        for bad in [
            "/..",
            "/a/../../b",
            "/..%2fsecret.txt",
            "/..%2Fsecret.txt",
            "/x/..%2f..%2fsecret",
            "/%2e%2e/secret",
            "/%2E%2e/secret",
            "/.%2e/secret",
            "/%252e%252e/secret",
            "/%25252e%25252e/secret",
            "/..%5csecret",
            "/..%5Csecret",
            "/..\\secret",
            "/a\\..\\..\\secret",
            "/..%255csecret",
            "/..;/secret",
            "/%c0%ae%c0%ae/secret",
            "/..%c0%afsecret",
            "/%e0%80%ae%e0%80%ae/secret",
            "/%u002e%u002e/secret",
            "/\u{ff0e}\u{ff0e}/secret",
            "/%ef%bc%8e%ef%bc%8e/secret",
            "/..\u{ff0f}secret",
            "/\u{2025}/secret",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refusals_say_why() {
        use PathError::*;
        for (bad, why) in [
            ("/a/../../b", ClimbsOut),
            ("/..%2fsecret", ClimbsOut),
            ("/a/..%2fb", EncodedDotSegment),
            ("/a/%2e%2e/b", EncodedDotSegment),
            ("/a/%2e", EncodedDotSegment),
            ("/a/..;/b", EncodedDotSegment),
            ("/%2525252e/secret", TooDeeplyEncoded),
            ("/a%00b", ControlCharacter),
            ("/a%0d%0ab", ControlCharacter),
            ("relative", NotAbsolute),
            ("@evil.example/", NotAbsolute),
        ] {
            assert_eq!(check(bad), Err(why), "{bad}");
        }
    }

    #[test]
    fn decoding_stops_after_the_bound() {
        assert_eq!(decoded_view(b"/%25252e").unwrap(), b"/.");
        assert_eq!(
            decoded_view(b"/%2525252e"),
            Err(PathError::TooDeeplyEncoded)
        );
        // A lone or malformed escape is left as it is.
        assert_eq!(decoded_view(b"/100%/%zz/%u12").unwrap(), b"/100%/%zz/%u12");
    }
}
