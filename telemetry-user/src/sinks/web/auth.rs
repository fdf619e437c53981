//! The optional bearer token (`http.bearer_token_file`): `Authorization: Bearer T`, or
//! `token=T` in the query for what a browser cannot send headers with (the page's
//! `EventSource`).
use hyper::Request;
use std::path::Path;

pub struct Token(Vec<u8>);

impl Token {
    /// The file's content without surrounding whitespace; empty is refused.
    pub fn read(path: &Path) -> Result<Token, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let t = text.trim();
        if t.is_empty() {
            return Err("the file is empty".into());
        }
        Ok(Token(t.as_bytes().to_vec()))
    }

    pub fn admits<B>(&self, req: &Request<B>) -> bool {
        let header = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if header.is_some_and(|t| self.matches(t.as_bytes())) {
            return true;
        }
        req.uri()
            .query()
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|kv| kv.strip_prefix("token="))
            .any(|t| self.matches(t.as_bytes()))
    }

    /// Compares every byte whatever the first difference, so timing tells nothing.
    fn matches(&self, given: &[u8]) -> bool {
        if given.len() != self.0.len() {
            return false;
        }
        self.0
            .iter()
            .zip(given)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, auth: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn header_or_query_token_admits_and_nothing_else_does() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").expect("write");
        let t = Token::read(&path).expect("token");
        assert!(t.admits(&req("/metrics", Some("Bearer s3cret"))));
        assert!(t.admits(&req("/events?token=s3cret", None)));
        assert!(!t.admits(&req("/metrics", None)));
        assert!(!t.admits(&req("/metrics", Some("Bearer s3creT"))));
        assert!(!t.admits(&req("/metrics", Some("Basic s3cret"))));
        assert!(!t.admits(&req("/?token=s3cre", None)));
        std::fs::write(&path, " \n").expect("write");
        assert!(Token::read(&path).is_err());
    }
}
