//! `sagitta passwd`: add, change or delete users in a password file (like
//! `mosquitto_passwd`). Lines are `username:$7$<iterations>$<salt>$<hash>` (PBKDF2-SHA512,
//! 100 000 iterations), readable by `sagitta broker` and by Mosquitto 2. Other lines
//! (comments, other users) are kept as they are. The file is replaced atomically (a
//! temporary file in the same directory, then a rename) and gets mode 0600. With `--scram`
//! the line holds SCRAM-SHA-256 credentials instead (see `sagitta_broker::password`).

use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sagitta_broker::PasswordHash;
use sagitta_broker::password::check_username;

/// Arguments of `sagitta passwd`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  sagitta passwd -c passwd alice          create (or overwrite) the file with user alice
  sagitta passwd passwd bob               add bob or change his password (asked twice)
  sagitta passwd -b passwd carol s3cret   batch mode: the password on the command line
  echo s3cret | sagitta passwd passwd dan one line of stdin when it is not a terminal
  sagitta passwd -D passwd bob            delete bob
  sagitta passwd --scram passwd erin      SCRAM-SHA-256 credentials for erin

Hashes are PBKDF2-SHA512 with 100000 iterations in Mosquitto 2's $7$ format: files work
with mosquitto too, and mosquitto_passwd files work with `sagitta broker`. With --scram
the line is SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey> (PostgreSQL's format).
Exit codes: 0 ok, 1 error, 2 bad arguments.")]
pub struct PasswdArgs {
    /// Create a new password file; an existing one is overwritten.
    #[arg(short = 'c', conflicts_with = "delete")]
    create: bool,
    /// Batch mode: take the password from the command line.
    #[arg(short = 'b', conflicts_with = "delete")]
    batch: bool,
    /// Delete the user from the file.
    #[arg(short = 'D')]
    delete: bool,
    /// Store SCRAM-SHA-256 credentials instead of a PBKDF2-SHA512 hash: the user can then
    /// log in with MQTT 5.0 enhanced authentication (method SCRAM-SHA-256) as well as with
    /// a plain password. Mosquitto does not read such lines.
    #[arg(long, conflicts_with = "delete")]
    scram: bool,
    /// The password file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The user to add, change or delete.
    #[arg(value_name = "USER")]
    user: String,
    /// The password (only with -b).
    #[arg(value_name = "PASSWORD")]
    password: Option<String>,
}

/// A failure: a message and the exit code.
struct Failure(u8, String);

fn usage(message: impl Into<String>) -> Failure {
    Failure(2, message.into())
}

fn error(message: impl Into<String>) -> Failure {
    Failure(1, message.into())
}

/// Runs `sagitta passwd`.
pub fn run(args: PasswdArgs) -> ExitCode {
    match execute(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            eprintln!("sagitta passwd: {message}");
            ExitCode::from(code)
        }
    }
}

fn execute(args: PasswdArgs) -> Result<(), Failure> {
    check_username(&args.user).map_err(|e| usage(format!("bad username: {e}")))?;
    if args.batch != args.password.is_some() {
        return Err(usage(if args.batch {
            "-b needs FILE USER PASSWORD"
        } else {
            "a PASSWORD argument needs -b (batch mode)"
        }));
    }
    let lines = if args.create {
        Vec::new()
    } else {
        let text = std::fs::read_to_string(&args.file).map_err(|e| {
            error(format!(
                "cannot read {}: {e}{}",
                args.file.display(),
                if e.kind() == std::io::ErrorKind::NotFound {
                    " (use -c to create it)"
                } else {
                    ""
                }
            ))
        })?;
        text.lines().map(str::to_owned).collect()
    };
    let lines = if args.delete {
        let before = lines.len();
        let kept: Vec<String> = lines
            .into_iter()
            .filter(|line| line_user(line) != Some(args.user.as_str()))
            .collect();
        if kept.len() == before {
            return Err(error(format!(
                "user `{}` is not in {}",
                args.user,
                args.file.display()
            )));
        }
        kept
    } else {
        let password = match args.password {
            Some(p) => p,
            None => read_password()?,
        };
        if password.is_empty() {
            return Err(error("the password is empty"));
        }
        let entry = if args.scram {
            let credentials = sagitta_broker::password::scram_credentials(password.as_bytes());
            format!("{}:{credentials}", args.user)
        } else {
            format!("{}:{}", args.user, PasswordHash::new(password.as_bytes()))
        };
        set_user(lines, &args.user, entry)
    };
    write_atomically(&args.file, &lines)
        .map_err(|e| error(format!("cannot write {}: {e}", args.file.display())))
}

/// The user a line is for, unless it is blank or a comment.
fn line_user(line: &str) -> Option<&str> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    line.split_once(':').map(|(user, _)| user)
}

/// Replaces the user's line (and drops any duplicates), or appends one.
fn set_user(lines: Vec<String>, user: &str, entry: String) -> Vec<String> {
    let mut entry = Some(entry);
    let mut out: Vec<String> = lines
        .into_iter()
        .filter_map(|line| {
            if line_user(&line) == Some(user) {
                entry.take()
            } else {
                Some(line)
            }
        })
        .collect();
    out.extend(entry);
    out
}

/// Asks twice on a terminal, or reads one line of stdin otherwise.
fn read_password() -> Result<String, Failure> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")
            .map_err(|e| error(format!("cannot read the password: {e}")))?;
        let second = rpassword::prompt_password("Reenter password: ")
            .map_err(|e| error(format!("cannot read the password: {e}")))?;
        if first != second {
            return Err(error("the passwords do not match"));
        }
        Ok(first)
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| error(format!("cannot read the password from stdin: {e}")))?;
        let trimmed = line.strip_suffix('\n').unwrap_or(&line);
        let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
        Ok(trimmed.to_owned())
    }
}

/// Writes `lines` to a temporary file (mode 0600) beside `path`, then renames it over `path`.
fn write_atomically(path: &Path, lines: &[String]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "passwd".into());
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut text = lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_user_replaces_or_appends() {
        let lines = vec![
            "# c".to_owned(),
            "alice:old".to_owned(),
            "bob:x".to_owned(),
            "alice:dup".to_owned(),
        ];
        let out = set_user(lines.clone(), "alice", "alice:new".into());
        assert_eq!(out, ["# c", "alice:new", "bob:x"]);
        let out = set_user(lines, "carol", "carol:n".into());
        assert_eq!(out.last().map(String::as_str), Some("carol:n"));
        assert_eq!(line_user("#alice:x"), None);
        assert_eq!(line_user(" "), None);
    }
}
