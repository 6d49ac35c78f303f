//! The documentation holds together: the README is a front door (at most
//! 150 lines) that links every page of docs/, every relative link of the
//! README and of docs/ resolves, and every docs/ page the code cites (help
//! texts, comments, the OpenAPI descriptions) exists.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The targets of a Markdown text's inline links and images, `](target)`.
fn links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .map(|target| target.split_whitespace().next().unwrap_or("").to_owned())
        .collect()
}

/// Relative links of `file` that name no file in the repository.
fn broken(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let folder = file.parent().unwrap();
    links(&text)
        .into_iter()
        .filter(|target| {
            !target.contains("://") && !target.starts_with('#') && !target.starts_with("mailto:")
        })
        .filter(|target| {
            let path = target.split('#').next().unwrap();
            !folder.join(path).exists()
        })
        .collect()
}

fn pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    pages.sort();
    pages
}

#[test]
fn the_readme_is_a_front_door_linking_every_page() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(lines <= 150, "README.md has {lines} lines; the manual belongs in docs/");
    let first_block = readme.split("```sh\n").nth(1).unwrap().split("```").next().unwrap();
    assert!(
        first_block.contains("cargo run --release -- demo") && first_block.contains("cargo test")
    );
    let linked = links(&readme);
    for page in pages() {
        let name = format!("docs/{}", page.file_name().unwrap().to_str().unwrap());
        assert!(linked.contains(&name), "README.md does not link {name}");
    }
}

#[test]
fn every_relative_link_resolves() {
    let mut files = vec![root().join("README.md"), root().join("ARCHITECTURE.md")];
    files.extend(pages());
    files.push(root().join("clients/typescript/README.md"));
    for file in files {
        assert_eq!(broken(&file), Vec::<String>::new(), "broken links in {}", file.display());
    }
}

#[test]
fn a_broken_link_is_found() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("there.md"), "").unwrap();
    let page = dir.path().join("page.md");
    std::fs::write(&page, "[a](there.md) [b](gone.md#x) [c](https://x.example/y) ![d](img.png)")
        .unwrap();
    assert_eq!(broken(&page), ["gone.md#x", "img.png"]);
}

/// Every `docs/….md` the code (and the TypeScript client) names, in help texts, comments or the
/// OpenAPI descriptions, is a page that exists; none names a document
/// that is not in the repository.
#[test]
fn every_page_the_code_cites_exists() {
    let client = root().join("clients/typescript");
    let mut stack = vec![root().join("crates"), client.join("src"), client.join("demo")];
    let mut cited = Vec::new();
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs" || ext == "ts") {
                let text = std::fs::read_to_string(&path).unwrap();
                let outside = concat!("SPEC", " §");
                assert!(
                    !text.contains(outside),
                    "{} cites a document outside the repository",
                    path.display()
                );
                for (at, _) in text.match_indices("docs/") {
                    let name: String = text[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || "/._-".contains(*c))
                        .collect();
                    if let Some(name) =
                        name.strip_suffix('.').or(Some(&name)).filter(|n| n.ends_with(".md"))
                    {
                        cited.push((path.clone(), name.to_owned()));
                    }
                }
            }
        }
    }
    assert!(cited.iter().any(|(_, name)| name == "docs/verification.md"), "{cited:?}");
    for (file, name) in cited {
        assert!(
            root().join(&name).exists(),
            "{} cites {name}, which does not exist",
            file.display()
        );
    }
}
