//! How the programs print an error: the error and its causes, each once. Our error types
//! already carry their source inside their own message (`bundle refused: <why>`), and
//! anyhow's `{:#}` appends every source again, so the same cause could print three times.

/// `err` and its sources joined with `: `, skipping a cause whose text is already there.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let t = e.to_string();
        if !text.contains(&t) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&t);
        }
        cur = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("reading {0}: {1}")]
    struct Outer(&'static str, #[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("context")]
    struct Ctx(#[source] Outer);

    #[test]
    fn each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        assert_eq!(
            super::chain(&Outer("a.txt", io)),
            "reading a.txt: no such file"
        );
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        assert_eq!(
            super::chain(&Ctx(Outer("a.txt", io))),
            "context: reading a.txt: no such file"
        );
    }
}
