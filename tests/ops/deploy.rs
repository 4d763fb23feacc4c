//! The operational artefacts in deploy/, read as the tools that use them
//! would: the image's build context and binary.

use std::path::Path;

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// `.dockerignore` patterns (comments and blank lines dropped).
fn dockerignore() -> Vec<String> {
    repo_file(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect()
}

/// The sources of the build stage's `COPY` lines.
fn copied_paths(dockerfile: &str) -> Vec<String> {
    dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words[..words.len() - 1]
                .iter()
                .map(|w| w.trim_start_matches("./").trim_end_matches('/').to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_docker_build_context_leaves_out_target_and_keeps_what_the_build_copies() {
    let ignored = dockerignore();
    assert!(
        ignored.iter().any(|p| p == "target"),
        ".dockerignore must list target/: {ignored:?}"
    );
    assert!(
        !ignored
            .iter()
            .any(|p| p.starts_with('!') && p.contains("target")),
        "{ignored:?}"
    );
    let dockerfile = repo_file("deploy/Dockerfile");
    let copied = copied_paths(&dockerfile);
    for needed in ["Cargo.toml", "Cargo.lock", "src", "sql"] {
        assert!(
            copied.iter().any(|c| c == needed),
            "{needed} not copied: {copied:?}"
        );
    }
    for path in &copied {
        assert!(
            !ignored.iter().any(|p| p == path || p == "*"),
            "the Dockerfile copies {path}, which .dockerignore leaves out"
        );
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(path).exists(),
            "the Dockerfile copies {path}, which does not exist"
        );
    }
}

#[test]
fn the_image_ships_a_stripped_binary_without_debug_info() {
    let dockerfile = repo_file("deploy/Dockerfile");
    let build = dockerfile
        .lines()
        .find(|l| l.starts_with("RUN cargo build"))
        .expect("a cargo build step");
    assert!(build.contains("--profile dist"), "{build}");
    assert!(
        dockerfile.contains("COPY --from=build /src/target/dist/walhook "),
        "the image must take the dist binary:\n{dockerfile}"
    );
    let manifest: toml::Table = repo_file("Cargo.toml").parse().expect("Cargo.toml");
    let dist = &manifest["profile"]["dist"];
    assert_eq!(dist["inherits"].as_str(), Some("release"), "{dist}");
    assert_eq!(dist["strip"].as_bool(), Some(true), "{dist}");
    assert_eq!(dist["debug"].as_bool(), Some(false), "{dist}");
    // Profiling builds keep their line tables.
    assert_eq!(
        manifest["profile"]["release"]["debug"].as_integer(),
        Some(1)
    );
}
