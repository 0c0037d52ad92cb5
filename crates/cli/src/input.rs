//! Reading resources from files, folders and standard input.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use strait_api::parse::{Parsed, parse_bytes};

/// Every document in `paths`: files, folders (recursively: `.yaml`, `.yml`, `.json`) or `-`.
pub fn read_all(paths: &[String]) -> Result<Vec<Parsed>> {
    let mut out = Vec::new();
    for p in paths {
        if p == "-" {
            let mut buf = Vec::new();
            std::io::stdin()
                .take(strait_api::parse::MAX_INPUT_BYTES as u64 + 1)
                .read_to_end(&mut buf)
                .context("reading standard input")?;
            out.extend(parse_bytes("-", &buf));
            continue;
        }
        let path = Path::new(p);
        let meta = std::fs::metadata(path).with_context(|| format!("{p}: cannot read it"))?;
        let files = if meta.is_dir() {
            let mut files = Vec::new();
            walk(path, &mut files)?;
            files.sort();
            if files.is_empty() {
                bail!("{p}: the folder has no .yaml, .yml or .json files");
            }
            files
        } else {
            vec![path.to_path_buf()]
        };
        for f in files {
            let len = std::fs::metadata(&f)?.len();
            let name = f.display().to_string();
            if len > strait_api::parse::MAX_INPUT_BYTES as u64 {
                bail!(
                    "{name}: the file is {len} bytes; the limit is {} bytes: split it",
                    strait_api::parse::MAX_INPUT_BYTES
                );
            }
            let bytes = std::fs::read(&f).with_context(|| format!("{name}: cannot read it"))?;
            out.extend(parse_bytes(&name, &bytes));
        }
    }
    Ok(out)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list it", dir.display()))?
    {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, files)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            files.push(path);
        }
    }
    Ok(())
}
