//! Numbered DAG folders for the mount tests: file `i` of generation `g` names both in its
//! first line and ends with `# end`, so a partial file, or a file of another generation, is
//! recognised from its bytes alone.

use std::path::Path;

/// Content of file `i` in generation `generation`: a header naming both, filler of a size
/// that varies with `i`, and an end marker.
pub fn content(generation: u64, i: usize) -> String {
    let mut text = format!("# gen={generation} file={i}\n");
    while text.len() < 200 + (i * 397) % 12_000 {
        text.push_str(&format!("x_{i} = {generation}  # filler\n"));
    }
    text.push_str("# end\n");
    text
}

/// Path of file `i`, spread over seven directories.
pub fn rel(i: usize) -> String {
    format!("team{}/dag_{i:03}.py", i % 7)
}

/// Writes files `0..files` of generation `generation` into `dir`.
pub fn write_generation(dir: &Path, generation: u64, files: usize) {
    for i in 0..files {
        let path = dir.join(rel(i));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content(generation, i)).unwrap();
    }
}
