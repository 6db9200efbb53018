//! The README's quick start is `examples/quickstart.rs`, byte for byte: a newcomer
//! pastes the README's program, CI runs the example, and both must be the same
//! program. (The block itself compiles as a doctest: see src/lib.rs.)

use std::path::Path;

const MARKER: &str = "<!-- quickstart:";

/// The fenced block that follows the marker comment in README.md.
fn quickstart_block(readme: &str) -> Option<String> {
    let after = &readme[readme.find(MARKER)?..];
    let mut lines = after.lines().skip(1);
    let fence = lines.next()?;
    if !fence.starts_with("```rust") {
        return None;
    }
    let mut block = String::new();
    for line in lines {
        if line == "```" {
            return Some(block);
        }
        block.push_str(line);
        block.push('\n');
    }
    None
}

#[test]
fn readme_quick_start_is_examples_quickstart() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let example = std::fs::read_to_string(root.join("examples/quickstart.rs")).unwrap();
    let block = quickstart_block(&readme)
        .expect("README.md has a ```rust block right after the `<!-- quickstart:` marker");
    if block.trim() != example.trim() {
        let line = block
            .lines()
            .zip(example.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| "the end".to_string(), |n| format!("line {}", n + 1));
        panic!(
            "README.md's quick start and examples/quickstart.rs differ (first at {line}): \
             change both, or copy one into the other"
        );
    }
}

#[test]
fn the_marker_finds_a_block() {
    let readme = "x\n<!-- quickstart: y -->\n```rust,no_run\nfn main() {}\n```\n";
    assert_eq!(quickstart_block(readme).as_deref(), Some("fn main() {}\n"));
    assert_eq!(quickstart_block("no marker"), None);
    assert_eq!(
        quickstart_block("<!-- quickstart: -->\n```rust\nunterminated\n"),
        None
    );
}
