//! The organisational domain (RFC 7489 §3.2) without the Public Suffix List.
//!
//! A full list (the `psl` crates) is a large generated table for one comparison;
//! this heuristic covers the cases that matter for a sender comparison: the
//! registrable domain is the last two labels, or the last three when the last
//! two are a known second-level public suffix (`co.uk`, `co.jp`, `com.au`, …) or
//! a generic second level (`co`, `com`, `net`, `org`, `ac`, `gov`, `edu`, `ne`,
//! `or`, `go`, `ltd`, `plc`) under a two-letter country code. Its failure mode
//! is a private registry (`github.io`-style): two of its customers look like one
//! organisation, which downgrades an alert to info — said in the docs.

/// Second-level labels that are registries under a country code.
const GENERIC_SECOND_LEVEL: &[&str] = &[
    "co", "com", "net", "org", "ac", "gov", "edu", "ne", "or", "go", "ltd", "plc", "gr", "ed",
    "lg", "ad", "mil", "nom", "sch",
];

/// The registrable part of `domain` (lower-cased input expected).
pub fn organisational(domain: &str) -> &str {
    let labels: Vec<&str> = domain.split('.').collect();
    let n = labels.len();
    if n <= 2 {
        return domain;
    }
    let tld = labels[n - 1];
    let second = labels[n - 2];
    let keep = if tld.len() == 2 && GENERIC_SECOND_LEVEL.contains(&second) {
        3
    } else {
        2
    };
    let skip: usize = labels[..n - keep].iter().map(|l| l.len() + 1).sum();
    &domain[skip..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrable_parts() {
        assert_eq!(organisational("example.com"), "example.com");
        assert_eq!(organisational("bounces.example.com"), "example.com");
        assert_eq!(organisational("a.b.example.org"), "example.org");
        assert_eq!(organisational("mail.shop.co.uk"), "shop.co.uk");
        assert_eq!(organisational("shop.co.uk"), "shop.co.uk");
        assert_eq!(organisational("mx.example.co.jp"), "example.co.jp");
        assert_eq!(organisational("mx.example.ne.jp"), "example.ne.jp");
        assert_eq!(organisational("x.example.com.au"), "example.com.au");
        // A two-letter TLD without a registry second level: two labels.
        assert_eq!(organisational("mail.example.de"), "example.de");
        assert_eq!(organisational("com"), "com");
        assert_eq!(organisational(""), "");
    }
}
