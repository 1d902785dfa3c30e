//! The shipped files say what the server does: the container's health check asks `/ready` (so a
//! container whose models failed to load, or whose engine stopped, is unhealthy rather than only
//! alive), and no document offers the CUDA build as working while no model runs on a GPU.
mod common;
use common::repo_root;

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

#[test]
fn the_docker_health_check_polls_ready() {
    let dockerfile = read("Dockerfile");
    let start = dockerfile
        .find("\nHEALTHCHECK ")
        .expect("a HEALTHCHECK instruction");
    // The instruction and its continuation line with the command.
    let cmd: String = dockerfile[start..].lines().skip(1).take(2).collect();
    assert!(cmd.contains("http://127.0.0.1:8080/ready"), "{cmd}");
    assert!(!cmd.contains("/health"), "{cmd}");
    assert!(read("docs/docker.md").contains("http://127.0.0.1:8080/ready"));
}

#[test]
fn no_document_offers_a_gpu_path_as_working() {
    let readme = read("README.md");
    let docker = read("docs/docker.md");
    for (name, text) in [("README.md", &readme), ("docs/docker.md", &docker)] {
        assert!(
            !text.contains("forwards to candle's CUDA backend"),
            "{name} promises a CUDA backend"
        );
    }
    assert!(readme.contains("GPUs: not supported yet"));
    assert!(docker.contains("## NVIDIA GPU image (not yet functional)"));
    assert!(read("Dockerfile").contains("NOT YET FUNCTIONAL"));
}
