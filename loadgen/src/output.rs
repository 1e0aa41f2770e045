//! Report files (`--json`, `--hgrm`), opened before the run starts so that
//! a path that cannot be written fails at once, not after the whole run.

use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

/// A file opened for writing up front and written once at the end. An
/// existing file is not truncated until then; a file this made and never
/// wrote (the run failed first) is removed when dropped.
#[derive(Debug)]
pub struct OutputFile {
    flag: &'static str,
    path: PathBuf,
    file: File,
    created: bool,
    written: bool,
}

impl OutputFile {
    /// Open `path` for writing; the error names `flag` and the path.
    pub fn open(flag: &'static str, path: &Path) -> Result<OutputFile, String> {
        let existed = std::fs::symlink_metadata(path).is_ok();
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|err| format!("cannot write {flag} {}: {err}", path.display()))?;
        Ok(OutputFile {
            flag,
            path: path.to_owned(),
            file,
            created: !existed,
            written: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replace the file's contents with `bytes` (a pipe or device such as
    /// /dev/stdout is written as it is).
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        let fail = |err: std::io::Error| {
            format!("cannot write {} {}: {err}", self.flag, self.path.display())
        };
        if self.file.metadata().map_err(fail)?.is_file() {
            self.file.set_len(0).map_err(fail)?;
            self.file.rewind().map_err(fail)?;
        }
        self.file.write_all(bytes).map_err(fail)?;
        self.file.flush().map_err(fail)?;
        self.written = true;
        Ok(())
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if self.created && !self.written {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ringworker-loadgen-output-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_missing_directory_is_refused_with_the_flag_and_path() {
        let path = dir("missing").join("no-such-dir").join("r.json");
        let err = OutputFile::open("--json", &path).unwrap_err();
        assert!(
            err.starts_with(&format!("cannot write --json {}: ", path.display())),
            "{err}"
        );
        let err = OutputFile::open("--hgrm", &dir("isdir")).unwrap_err();
        assert!(err.starts_with("cannot write --hgrm "), "{err}");
    }

    #[test]
    fn an_existing_file_is_kept_until_written_and_then_replaced() {
        let path = dir("existing").join("r.json");
        std::fs::write(&path, "an older, longer report").unwrap();
        let mut out = OutputFile::open("--json", &path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "an older, longer report"
        );
        out.write(b"{}").unwrap();
        drop(out);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}");
        // Not written this time: an existing file stays.
        drop(OutputFile::open("--json", &path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}");
    }

    #[test]
    fn a_file_made_for_a_run_that_never_wrote_it_is_removed() {
        let path = dir("unwritten").join("r.json");
        let out = OutputFile::open("--json", &path).unwrap();
        assert!(path.exists(), "made up front");
        drop(out);
        assert!(!path.exists());
    }
}
