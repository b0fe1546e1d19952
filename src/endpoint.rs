//! The four endpoints, by name: a leaf type, so that the API can route on it and the metrics and the
//! access log can label with it, without either knowing the other.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    All,
    First,
    WithinTimeout,
    Smart,
}

impl Endpoint {
    pub fn from_path(path: &str) -> Option<Endpoint> {
        match path {
            "/api/all" => Some(Endpoint::All),
            "/api/first" => Some(Endpoint::First),
            "/api/within-timeout" => Some(Endpoint::WithinTimeout),
            "/api/smart" => Some(Endpoint::Smart),
            _ => None,
        }
    }
}
