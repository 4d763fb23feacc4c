//! The operational artefacts in deploy/, read as the tools that use them
//! would: the image's build context and binary, and the Kubernetes
//! manifests as typed Kubernetes objects (no cluster needed).

use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Probe, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;

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

/// Every object in deploy/kubernetes/, typed as the API server would
/// read it.
#[derive(Default)]
struct Manifests {
    deployments: Vec<Deployment>,
    pdbs: Vec<PodDisruptionBudget>,
    secrets: Vec<Secret>,
    config_maps: Vec<ConfigMap>,
}

fn manifests() -> Manifests {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut found = Manifests::default();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    for file in files {
        let text = std::fs::read_to_string(&file).expect("manifest");
        for document in serde_norway::Deserializer::from_str(&text) {
            let value = serde_norway::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if value.is_null() {
                continue;
            }
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            let typed = |what: &str| format!("{}: {kind} {what}", file.display());
            match kind.as_str() {
                "Deployment" => found.deployments.push(
                    serde_norway::from_value(value)
                        .unwrap_or_else(|e| panic!("{}: {e}", typed(""))),
                ),
                "PodDisruptionBudget" => found.pdbs.push(
                    serde_norway::from_value(value)
                        .unwrap_or_else(|e| panic!("{}: {e}", typed(""))),
                ),
                "Secret" => found.secrets.push(
                    serde_norway::from_value(value)
                        .unwrap_or_else(|e| panic!("{}: {e}", typed(""))),
                ),
                "ConfigMap" => found.config_maps.push(
                    serde_norway::from_value(value)
                        .unwrap_or_else(|e| panic!("{}: {e}", typed(""))),
                ),
                other => panic!("{}: a {other:?} the test does not check", file.display()),
            }
        }
    }
    found
}

fn http_get(probe: Option<&Probe>) -> (String, String) {
    let get = probe
        .and_then(|p| p.http_get.as_ref())
        .expect("an httpGet probe");
    let port = match &get.port {
        IntOrString::String(name) => name.clone(),
        IntOrString::Int(n) => n.to_string(),
    };
    (get.path.clone().unwrap_or_default(), port)
}

#[test]
fn the_kubernetes_manifests_parse_and_keep_two_ready_replicas_apart() {
    let found = manifests();
    let [deployment] = &found.deployments[..] else {
        panic!("one Deployment expected");
    };
    let spec = deployment.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(2));
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .expect("pod labels");
    let selects_pods = |selector: &LabelSelector| {
        selector
            .match_labels
            .as_ref()
            .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v)))
    };
    assert!(selects_pods(&spec.selector));
    let pod = spec.template.spec.as_ref().expect("pod spec");

    // Probes: liveness on /healthz, readiness on /readyz (a standby is ready).
    let [container] = &pod.containers[..] else {
        panic!("one container expected");
    };
    let admin_port = container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("admin"))
        .expect("an admin port");
    assert_eq!(admin_port.container_port, 9187);
    assert_eq!(
        http_get(container.liveness_probe.as_ref()),
        ("/healthz".into(), "admin".into())
    );
    assert_eq!(
        http_get(container.readiness_probe.as_ref()),
        ("/readyz".into(), "admin".into())
    );

    // After exit code 2 (restarting will not help) the container stays up,
    // alive and unready, instead of crash-looping.
    let args = container.args.as_deref().unwrap_or_default();
    assert!(
        args.iter().any(|a| a == "--hold-unrecoverable"),
        "walhook run without --hold-unrecoverable restart-loops on exit 2: {args:?}"
    );

    // A pinned image, never :latest.
    let image = container.image.as_deref().expect("image");
    let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
    assert!(
        !tag.is_empty() && tag != "latest" && !tag.contains('/'),
        "image {image} needs a version tag"
    );

    // The two replicas never share a node.
    let anti = pod
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .expect("required pod anti-affinity");
    assert!(
        anti.iter()
            .any(|term| term.topology_key == "kubernetes.io/hostname"
                && term.label_selector.as_ref().is_some_and(selects_pods)),
        "anti-affinity must select the pods by hostname"
    );
    // With that, a rollout replaces one pod at a time instead of surging.
    let rolling = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .expect("a rolling update strategy");
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(0)));
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));

    // A drain leaves one pod.
    let [pdb] = &found.pdbs[..] else {
        panic!("one PodDisruptionBudget expected");
    };
    let pdb = pdb.spec.as_ref().expect("PDB spec");
    assert_eq!(pdb.min_available, Some(IntOrString::Int(1)));
    assert!(pdb.selector.as_ref().is_some_and(selects_pods));

    // The sslrootcert in the database URL is a file a volume provides.
    let url = found
        .secrets
        .iter()
        .find_map(|s| s.string_data.as_ref()?.get("WALHOOK_DATABASE_URL").cloned())
        .expect("WALHOOK_DATABASE_URL in a Secret");
    if let Some(root) = url
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("sslrootcert="))
    {
        let (dir, file) = root.rsplit_once('/').expect("an absolute path");
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == dir)
            .unwrap_or_else(|| panic!("nothing is mounted at {dir} for sslrootcert={root}"));
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .expect("the mounted volume");
        let secret_name = volume
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.clone())
            .expect("sslrootcert from a Secret volume");
        let secret = found
            .secrets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(secret_name.as_str()))
            .unwrap_or_else(|| panic!("no Secret {secret_name} in the manifests"));
        assert!(
            secret
                .string_data
                .as_ref()
                .is_some_and(|d| d.contains_key(file))
                || secret.data.as_ref().is_some_and(|d| d.contains_key(file)),
            "Secret {secret_name} has no key {file}"
        );
    }

    // The config the pods read listens where the probes look.
    let config = found
        .config_maps
        .iter()
        .find_map(|c| c.data.as_ref()?.get("config.toml").cloned())
        .expect("config.toml in a ConfigMap");
    let config: toml::Table = config.parse().expect("config.toml");
    assert_eq!(config["admin"]["listen"].as_str(), Some("0.0.0.0:9187"));
}

/// The systemd unit restarts walhook on failures, never after exit code 2
/// (a bad configuration, a lost slot: restarting will not help).
#[test]
fn the_systemd_unit_does_not_restart_after_exit_2() {
    let unit = repo_file("deploy/systemd/walhook.service");
    let setting = |key: &str| {
        unit.lines()
            .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{key} missing from the unit"))
    };
    assert_eq!(setting("Restart"), "always");
    assert!(
        setting("RestartPreventExitStatus")
            .split_whitespace()
            .any(|c| c == "2"),
        "{unit}"
    );
}
