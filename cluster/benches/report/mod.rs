//! What the cluster benches print: the nats-server they ran and a table of figures.

use std::path::Path;

/// `nats-server --version` of `binary` (empty if it cannot say).
pub fn server_version(binary: &Path) -> String {
    std::process::Command::new(binary)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// `heading`, then `rows` as a two-column Markdown table.
pub fn print_table(heading: &str, rows: &[(String, String)]) {
    println!("\n{heading}\n");
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(10);
    for (what, value) in rows {
        println!("| {what:width$} | {value} |");
    }
}
