//! `cargo xtask docs`: writes docs/cli.md from `lb man --markdown`; with
//! `--check`, fails instead if it is stale. Either way it then checks that
//! every relative link in README.md and docs/*.md leads to a file that
//! exists and, for a Markdown file, to a heading it has, and that the
//! README links every document in docs/.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::{cargo, workspace_root};

/// The generated reference, relative to the workspace root.
const CLI_DOC: &str = "docs/cli.md";

pub fn docs(check: bool) -> anyhow::Result<()> {
    let root = workspace_root();
    cargo(&[
        "build".into(),
        "--package".into(),
        "lb-userspace".into(),
        "--bin".into(),
        "lb".into(),
    ])?;
    let reference = lb_markdown(&root)?;
    let mut problems = Vec::new();
    if !check {
        std::fs::write(root.join(CLI_DOC), &reference)?;
        println!("docs: wrote {CLI_DOC}");
    } else if std::fs::read_to_string(root.join(CLI_DOC)).ok() != Some(reference) {
        problems.push(format!(
            "{CLI_DOC} differs from `lb man --markdown`: run `cargo xtask docs`"
        ));
    }
    problems.extend(check_links(&root)?);
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    println!("docs: {CLI_DOC} is current; every link in README.md and docs/ resolves");
    Ok(())
}

fn lb_markdown(root: &Path) -> anyhow::Result<String> {
    let lb = root.join("target/debug/lb");
    let output = Command::new(&lb)
        .args(["man", "--markdown"])
        .output()
        .with_context(|| format!("running {}", lb.display()))?;
    anyhow::ensure!(output.status.success(), "`lb man --markdown` failed");
    Ok(String::from_utf8(output.stdout)?)
}

/// One line per broken link, and per document the README doesn't link.
fn check_links(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut files = vec![root.join("README.md")];
    let mut documents = BTreeSet::new();
    for entry in std::fs::read_dir(root.join("docs"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            documents.insert(path.clone());
            files.push(path);
        }
    }
    let mut anchors = HashMap::new();
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        let name = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        for (line, target) in links(&text) {
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let dest = if path.is_empty() {
                file.clone()
            } else {
                normalise(&file.parent().unwrap_or(root).join(path))
            };
            if name == "README.md" {
                documents.remove(&dest);
            }
            if let Some(problem) = check_target(root, &dest, anchor, &mut anchors) {
                problems.push(format!("{name}:{line}: link `{target}`: {problem}"));
            }
        }
    }
    for document in documents {
        let name = document.strip_prefix(root).unwrap_or(&document).display();
        problems.push(format!("{name}: not linked from README.md"));
    }
    Ok(problems)
}

/// What is wrong with a link to `anchor` in `dest`, if anything. Anchors
/// are checked in Markdown files only (a source file's `#L10` is GitHub's).
fn check_target(
    root: &Path,
    dest: &Path,
    anchor: &str,
    anchors: &mut HashMap<PathBuf, BTreeSet<String>>,
) -> Option<String> {
    let name = dest.strip_prefix(root).unwrap_or(dest).display();
    if !dest.exists() {
        return Some(format!("{name} does not exist"));
    }
    if anchor.is_empty() || dest.extension().is_none_or(|e| e != "md") {
        return None;
    }
    let known = anchors.entry(dest.to_owned()).or_insert_with(|| {
        std::fs::read_to_string(dest)
            .map(|text| headings(&text))
            .unwrap_or_default()
    });
    (!known.contains(anchor)).then(|| format!("{name} has no heading with the anchor `{anchor}`"))
}

/// `docs/../README.md` → `README.md`, so README's links compare equal to
/// the paths read_dir gives.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The anchors GitHub gives the ATX headings (`## Title`) outside code
/// blocks; a repeated one gets `-1`, `-2`, … as on GitHub.
fn headings(markdown: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = BTreeSet::new();
    for line in without_fences(markdown).lines() {
        let Some(title) = heading_text(line) else {
            continue;
        };
        let anchor = github_anchor(title);
        let count = seen.entry(anchor.clone()).or_default();
        anchors.insert(match *count {
            0 => anchor,
            n => format!("{anchor}-{n}"),
        });
        *count += 1;
    }
    anchors
}

fn heading_text(line: &str) -> Option<&str> {
    let hashes = line.len() - line.trim_start_matches('#').len();
    let rest = &line[hashes..];
    ((1..=6).contains(&hashes) && rest.starts_with(' '))
        .then(|| rest.trim().trim_end_matches('#').trim())
}

/// GitHub's heading anchor: lowercase, spaces to `-`, punctuation other
/// than `-` and `_` dropped (backticks included, so `lb run` in code
/// becomes `lb-run`).
fn github_anchor(title: &str) -> String {
    title
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Relative targets of inline links (`[text](target)`, images too) with
/// their line numbers; links in code blocks and code spans are examples,
/// not links.
fn links(markdown: &str) -> Vec<(usize, String)> {
    let text = without_code_spans(&without_fences(markdown));
    let mut found = Vec::new();
    for (start, _) in text.match_indices("](") {
        let rest = &text[start + 2..];
        let target = link_target(rest);
        let line = text[..start].matches('\n').count() + 1;
        let external = target.contains("://") || target.starts_with("mailto:");
        if !target.is_empty() && !external {
            found.push((line, target.to_owned()));
        }
    }
    found
}

/// The target up to the `)` that closes the link (parentheses inside it
/// balanced), without a title or angle brackets.
fn link_target(rest: &str) -> &str {
    let mut depth = 0;
    let end = rest
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => return true,
                ')' => depth -= 1,
                _ => {}
            }
            false
        })
        .map_or(rest.len(), |(i, _)| i);
    let target = rest[..end].split_whitespace().next().unwrap_or("");
    target.trim_start_matches('<').trim_end_matches('>')
}

/// The text with the lines of fenced code blocks (``` or ~~~) blanked,
/// keeping the line count.
fn without_fences(markdown: &str) -> String {
    let mut fence: Option<&str> = None;
    let mut out = String::with_capacity(markdown.len());
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(open), Some(m)) if open == m => fence = None,
            (None, None) => out.push_str(line),
            _ => {}
        }
        out.push('\n');
    }
    out
}

/// The text with code spans blanked (newlines kept). A span may cross
/// lines but not a blank line; a backtick run with no closing run of the
/// same length is literal, as in CommonMark.
fn without_code_spans(text: &str) -> String {
    text.split_inclusive("\n\n")
        .map(|paragraph| {
            let mut out: Vec<char> = paragraph.chars().collect();
            let mut i = 0;
            while i < out.len() {
                let run = backtick_run(&out, i);
                if run == 0 {
                    i += 1;
                    continue;
                }
                match closing_run(&out, i + run, run) {
                    Some(end) => {
                        for c in &mut out[i..end] {
                            if *c != '\n' {
                                *c = ' ';
                            }
                        }
                        i = end;
                    }
                    None => i += run,
                }
            }
            out.into_iter().collect::<String>()
        })
        .collect()
}

fn backtick_run(chars: &[char], from: usize) -> usize {
    chars[from..].iter().take_while(|&&c| c == '`').count()
}

/// Where the run of exactly `len` backticks that closes a span ends.
fn closing_run(chars: &[char], from: usize, len: usize) -> Option<usize> {
    let mut i = from;
    while i < chars.len() {
        let run = backtick_run(chars, i);
        if run == len {
            return Some(i + run);
        }
        i += run.max(1);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_are_githubs() {
        let text = "# lb\n## `lb vip add`\n### What lb doesn't do yet\n\
                    ## Restarts, upgrades, crashes\n```\n## not a heading\n```\n## Logs\n## Logs\n";
        let anchors: Vec<String> = headings(text).into_iter().collect();
        assert_eq!(
            anchors,
            [
                "lb",
                "lb-vip-add",
                "logs",
                "logs-1",
                "restarts-upgrades-crashes",
                "what-lb-doesnt-do-yet"
            ]
        );
    }

    #[test]
    fn links_in_code_are_not_links() {
        let text = "see [a](docs/a.md#x) and `[b](b.md)`\n\
                    ```\n[c](c.md)\n```\n\
                    a span `across\n[d](d.md) lines` and [e](<e.md> \"title\")\n\
                    [web](https://example.com) [here](#top) ``[f](f.md)``\n";
        assert_eq!(
            links(text),
            [
                (1, "docs/a.md#x".to_owned()),
                (6, "e.md".to_owned()),
                (7, "#top".to_owned())
            ]
        );
    }

    #[test]
    fn an_unclosed_backtick_is_literal() {
        let text = "a ` alone, then [a](a.md)\n\nand `[b](b.md)`\n";
        assert_eq!(links(text), [(1, "a.md".to_owned())]);
    }
}
