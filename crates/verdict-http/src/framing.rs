//! Who may frame the admin dashboard (`dashboard_frame_ancestors`): by
//! default nobody (`frame-ancestors 'none'` and `X-Frame-Options: DENY`);
//! set, the platform's admin shell named by it may embed the pages. The
//! session cookie stays `SameSite=Strict`, so a frame on the same site
//! works and a cross-site one is never signed in.

use axum::http::HeaderValue;

/// The checked `frame-ancestors` source list of the dashboard pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameAncestors {
    /// The source list as it goes into the CSP (`'none'` by default).
    sources: String,
}

/// The default: no page may frame the dashboard.
pub const FRAME_ANCESTORS_DEFAULT: &str = "'none'";

impl Default for FrameAncestors {
    fn default() -> FrameAncestors {
        FrameAncestors { sources: FRAME_ANCESTORS_DEFAULT.to_owned() }
    }
}

impl FrameAncestors {
    /// Checks a CSP `frame-ancestors` source list (CSP 3, §6.4.2): `'none'`
    /// alone, or space-separated `'self'`, scheme sources (`https:`) and
    /// host sources (`https://admin.example.com`, `https://*.example.com:8443`).
    /// Anything that could end the directive or the header (`;`, `,`, a
    /// quote, a control character, non-ASCII) is refused, naming it.
    pub fn parse(text: &str) -> Result<FrameAncestors, String> {
        let tokens: Vec<&str> = text.split_ascii_whitespace().collect();
        if tokens.is_empty() {
            return Err("dashboard_frame_ancestors: empty (use 'none' to forbid framing)".into());
        }
        if let Some(bad) = text
            .chars()
            .find(|c| !c.is_ascii() || c.is_ascii_control() || matches!(c, ';' | ',' | '"'))
        {
            return Err(format!(
                "dashboard_frame_ancestors: {bad:?} is not allowed in a frame-ancestors source list"
            ));
        }
        for token in &tokens {
            let keyword = token.starts_with('\'');
            let valid = if keyword {
                *token == "'self'" || (*token == "'none'" && tokens.len() == 1)
            } else {
                is_source(token)
            };
            if !valid {
                return Err(format!(
                    "dashboard_frame_ancestors: {token:?} is not a frame-ancestors source \
                     ('none' alone, 'self', https:, or scheme://host[:port][/path])"
                ));
            }
        }
        Ok(FrameAncestors { sources: tokens.join(" ") })
    }

    /// True for the default: framing forbidden, `X-Frame-Options: DENY` sent.
    pub fn is_none(&self) -> bool {
        self.sources == FRAME_ANCESTORS_DEFAULT
    }

    /// The dashboard pages' `Content-Security-Policy`.
    pub fn content_security_policy(&self) -> HeaderValue {
        let policy = format!(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors {}; base-uri 'none'",
            self.sources
        );
        // `parse` let through visible ASCII and spaces only.
        HeaderValue::from_str(&policy).expect("a checked source list is a header value")
    }
}

/// A scheme source (`https:`) or a host source
/// (`[scheme://](*.)host[:port|:*][/path]`).
fn is_source(token: &str) -> bool {
    let scheme_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.');
    let (scheme, rest) = match token.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => match token.strip_suffix(':') {
            Some(scheme) => {
                return scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                    && scheme.chars().all(scheme_char);
            }
            None => (None, token),
        },
    };
    if let Some(scheme) = scheme
        && !(scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme.chars().all(scheme_char))
    {
        return false;
    }
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let host = host.strip_prefix("*.").unwrap_or(host);
    let host_ok = host == "*"
        || (!host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            }));
    let port_ok = port.is_none_or(|port| {
        port == "*"
            || (!port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()))
    });
    let path_ok = path.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                '/' | '-'
                    | '.'
                    | '_'
                    | '~'
                    | '%'
                    | '!'
                    | '$'
                    | '&'
                    | '('
                    | ')'
                    | '*'
                    | '+'
                    | '='
                    | ':'
                    | '@'
            )
    });
    host_ok && port_ok && path_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_an_admin_shell_would_use_are_taken() {
        for good in [
            "'none'",
            "'self'",
            "https://admin.example.com",
            "'self' https://admin.example.com https://*.example.com:8443",
            "https:",
            "http://localhost:3000/shell",
        ] {
            assert!(FrameAncestors::parse(good).is_ok(), "{good}");
        }
        assert!(FrameAncestors::parse("'none'").expect("valid").is_none());
        assert!(!FrameAncestors::parse("'self'").expect("valid").is_none());
        assert_eq!(
            FrameAncestors::parse("  'self'   https://a.example ").expect("valid").sources,
            "'self' https://a.example"
        );
    }

    #[test]
    fn anything_that_could_break_out_of_the_directive_is_refused() {
        for bad in [
            "",
            "   ",
            "'self'; script-src *",
            "https://a.example\nX-Injected: 1",
            "https://a.example\r",
            "https://a.example, https://b.example",
            "'none' 'self'",
            "'unsafe-inline'",
            "\"self\"",
            "https://exämple.com",
            "https://a.example:99999999",
            "https://a..example",
            "1http:",
        ] {
            let refused = FrameAncestors::parse(bad);
            assert!(refused.is_err(), "{bad:?} was taken");
            assert!(refused.unwrap_err().starts_with("dashboard_frame_ancestors: "));
        }
    }
}
