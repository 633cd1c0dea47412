//! A reader of Dockerfile instructions and stages, enough for static checks.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// One build stage: its `FROM` arguments and the instructions after it.
#[derive(Debug)]
pub(crate) struct Stage {
    pub(crate) from: String,
    /// Instruction names in upper case, with their arguments.
    pub(crate) instructions: Vec<(String, String)>,
}

/// The stages of a Dockerfile, in order.
#[derive(Debug)]
pub(crate) struct Dockerfile {
    pub(crate) stages: Vec<Stage>,
}

impl Dockerfile {
    /// Reads a Dockerfile, joining continuation lines and dropping comments.
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        let mut stages: Vec<Stage> = Vec::new();
        let mut logical = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') || (trimmed.is_empty() && logical.is_empty()) {
                continue;
            }
            if let Some(continued) = trimmed.strip_suffix('\\') {
                logical.push_str(continued);
                logical.push(' ');
                continue;
            }
            logical.push_str(trimmed);
            let instruction = std::mem::take(&mut logical);
            let (name, arguments) = instruction
                .split_once(char::is_whitespace)
                .unwrap_or((&instruction, ""));
            let name = name.to_ascii_uppercase();
            let arguments = arguments.trim().to_string();
            if name == "FROM" {
                stages.push(Stage {
                    from: arguments,
                    instructions: Vec::new(),
                });
            } else if let Some(stage) = stages.last_mut() {
                stage.instructions.push((name, arguments));
            } else if name != "ARG" {
                bail!("{}: {name} before the first FROM", path.display());
            }
        }
        if stages.is_empty() {
            bail!("{} has no FROM instruction", path.display());
        }
        Ok(Self { stages })
    }

    /// Returns the stage that becomes the image.
    pub(crate) fn final_stage(&self) -> &Stage {
        self.stages
            .last()
            .expect("load rejects a Dockerfile without stages")
    }

    /// Returns the numeric uid and gid of the final stage's last `USER`.
    pub(crate) fn final_user(&self) -> Result<(u32, u32)> {
        let Some((_, user)) = self
            .final_stage()
            .instructions
            .iter()
            .rev()
            .find(|(name, _)| name == "USER")
        else {
            bail!("the final stage has no USER instruction, so the image runs as root");
        };
        let (uid, gid) = user.split_once(':').unwrap_or((user, user));
        let uid = uid
            .parse()
            .with_context(|| format!("USER {user}: the uid is not numeric"))?;
        let gid = gid
            .parse()
            .with_context(|| format!("USER {user}: the gid is not numeric"))?;
        Ok((uid, gid))
    }
}

impl Stage {
    /// Returns the base image, without `--platform` and the `AS` name.
    pub(crate) fn base_image(&self) -> &str {
        self.from
            .split_whitespace()
            .find(|word| !word.starts_with("--"))
            .unwrap_or_default()
    }

    /// Returns whether the stage has the instruction with these exact arguments.
    pub(crate) fn has_instruction(&self, name: &str, arguments: &str) -> bool {
        self.instructions
            .iter()
            .any(|(instruction, args)| instruction == name && args == arguments)
    }

    /// Returns the destination of every `COPY` of the stage.
    pub(crate) fn copy_destinations(&self) -> Vec<String> {
        self.instructions
            .iter()
            .filter(|(name, _)| name == "COPY")
            .filter_map(|(_, arguments)| arguments.split_whitespace().last().map(str::to_string))
            .collect()
    }

    /// Returns the last `ENTRYPOINT`, which must be in exec (JSON) form.
    pub(crate) fn entrypoint(&self) -> Result<Vec<String>> {
        let Some((_, arguments)) = self
            .instructions
            .iter()
            .rev()
            .find(|(name, _)| name == "ENTRYPOINT")
        else {
            bail!("the final stage has no ENTRYPOINT");
        };
        let words: Vec<String> = serde_json::from_str(arguments).with_context(|| {
            format!("ENTRYPOINT {arguments} is not in exec form, so it would need a shell")
        })?;
        if words.is_empty() {
            bail!("ENTRYPOINT is empty");
        }
        Ok(words)
    }
}
