//! `tierwatch-dashboards --language vi|en --out DIR`: writes the Grafana
//! dashboards of one language into DIR (created if missing), one JSON file
//! each, and prints their paths.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::path::PathBuf;
use std::process::ExitCode;

use tierwatch_dashboards::Language;

const USAGE: &str = "usage: tierwatch-dashboards --language vi|en --out DIR";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut language, mut out) = (None, None);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--language", Some(v)) => match Language::from_code(&v) {
                Some(l) => language = Some(l),
                None => return fail(&format!("--language {v:?}: give vi or en")),
            },
            ("--out", Some(v)) => out = Some(PathBuf::from(v)),
            _ => return fail(&format!("{a:?}: {USAGE}")),
        }
    }
    let (Some(language), Some(out)) = (language, out) else { return fail(USAGE) };
    match tierwatch_dashboards::write(language, &out) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("writing dashboards into {}: {e}", out.display())),
    }
}

fn fail(why: &str) -> ExitCode {
    eprintln!("tierwatch-dashboards: {why}");
    ExitCode::from(2)
}
