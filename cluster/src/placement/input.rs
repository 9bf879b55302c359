//! What the placer is given: the boards, the functions, the previous plan.

use std::collections::{BTreeMap, BTreeSet};

use bramble_gateway::types::FunctionDeployment;
use bramble_hardware::grants::{self, GrantError, Grants};
use bramble_runtime::image::platform::Platform;

use super::Plan;
use super::constraints::{Constraint, ConstraintError, normalise_arch, parse_constraints};
use crate::membership::{BoardInfo, BoardState, HardwareSummary, View};

/// Everything [`super::place`] looks at.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlacementInput {
    /// The boards of the cluster (names are unique; a second board of the same name is ignored).
    pub boards: Vec<Board>,
    /// The functions (keys are unique; a second function of the same key is ignored).
    pub functions: Vec<Function>,
    /// The plan in force (empty at first): what is still valid in it is kept.
    pub previous: Plan,
}

pub use crate::function_key::FunctionKey;

/// A board as the placer sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Board {
    /// Its name.
    pub name: String,
    /// Alive, suspect or dead.
    pub state: BoardState,
    /// It is leaving the cluster.
    pub leaving: bool,
    /// Its architecture as constraints name it (`arm64`, `arm`, `amd64`).
    pub arch: String,
    /// The platform its runtime runs images for (`None`: unknown; then only functions whose
    /// image platforms are unknown go there).
    pub platform: Option<Platform>,
    /// Memory functions may reserve on it, bytes (`None`: no budget).
    pub memory_budget: Option<u64>,
    /// The hardware it lends.
    pub hardware: HardwareSummary,
    /// Its operator labels.
    pub labels: BTreeMap<String, String>,
    /// Functions it runs outside the cluster ([`BoardInfo::outside`]): the cluster's functions
    /// of those keys do not qualify for it.
    pub outside: BTreeSet<FunctionKey>,
}

impl Board {
    /// A board from its record and its state as membership sees it.
    pub fn from_info(info: &BoardInfo, state: BoardState) -> Board {
        let arch = normalise_arch(&info.arch).map_or_else(|| info.arch.clone(), str::to_owned);
        let platform = Platform::parse(&info.platform).ok().or_else(|| {
            match arch.as_str() {
                "arm" => Some("linux/arm/v7"),
                "arm64" => Some("linux/arm64"),
                "amd64" => Some("linux/amd64"),
                _ => None,
            }
            .and_then(|p| Platform::parse(p).ok())
        });
        Board {
            name: info.name.clone(),
            state,
            leaving: info.leaving,
            arch,
            platform,
            memory_budget: (info.memory.total != u64::MAX).then_some(info.memory.total),
            hardware: info.hardware.clone(),
            labels: info.labels.clone(),
            outside: info.outside.clone(),
        }
    }

    /// The boards of a membership view whose records are known.
    pub fn all_from_view(view: &View) -> Vec<Board> {
        view.boards
            .values()
            .filter_map(|b| b.info.as_ref().map(|info| Board::from_info(info, b.state)))
            .collect()
    }

    /// Whether new replicas may go here: alive and not leaving.
    pub fn takes_new_work(&self) -> bool {
        self.state == BoardState::Alive && !self.leaving
    }

    /// Whether what it already runs stays: not dead and not leaving (a suspect board keeps
    /// its replicas but gets nothing new).
    pub fn keeps_work(&self) -> bool {
        self.state != BoardState::Dead && !self.leaving
    }

    /// Whether it runs an image built for one of `platforms` (`None`: unknown, any board).
    pub fn runs(&self, platforms: Option<&[Platform]>) -> bool {
        match (platforms, &self.platform) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(image), Some(host)) => image.iter().any(|p| host.run_rank(p).is_some()),
        }
    }

    /// The first thing of `grants` this board does not have (`GPIO17`, `I2C bus 1`, `SPI
    /// 0.0`, `PWM channel 0`, `sensor w1:28-…`), `None` if it has all.
    pub fn lacks(&self, grants: &Grants) -> Option<String> {
        let hw = &self.hardware;
        if let Some(line) = grants.gpio.keys().find(|l| !hw.gpio_lines.contains(l)) {
            return Some(line.clone());
        }
        if let Some(bus) = grants
            .i2c
            .keys()
            .find(|b| !hw.i2c_buses.contains(&u32::from(**b)))
        {
            return Some(format!("I2C bus {bus}"));
        }
        if let Some((bus, cs)) = grants
            .spi
            .iter()
            .find(|(bus, cs)| !hw.spi.contains(&format!("{bus}.{cs}")))
        {
            return Some(format!("SPI {bus}.{cs}"));
        }
        if let Some(channel) = grants.pwm.iter().find(|c| !hw.pwm.contains(c)) {
            return Some(format!("PWM channel {channel}"));
        }
        grants
            .sensors
            .iter()
            .find(|id| !has_sensor(hw, id))
            .map(|id| format!("sensor {id}"))
    }
}

/// Whether the board has sensor `id` (`w1:SERIAL`: its 1-Wire devices list `SERIAL`).
fn has_sensor(hw: &HardwareSummary, id: &str) -> bool {
    match id.split_once(':') {
        Some(("w1", serial)) => hw.one_wire.iter().any(|s| s == serial),
        _ => false,
    }
}

/// A function as the placer sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Function {
    /// Its key.
    pub key: FunctionKey,
    /// Desired replicas; 0 = scaled to zero (it keeps a home board with one replica's memory
    /// reserved, so a request can wake it).
    pub replicas: u32,
    /// Memory each replica reserves, bytes: its memory limit, or the node default (0: none).
    pub memory: u64,
    /// The platforms its image is built for (`None`: not known yet; any board).
    pub platforms: Option<Vec<Platform>>,
    /// The hardware it is granted (`None`: none).
    pub hardware: Option<Grants>,
    /// Its constraints, all of which a board must satisfy.
    pub constraints: Vec<Constraint>,
    /// The board its first replica goes to when that board qualifies and has room (the board
    /// it was imported from, where it already runs: [`IMPORTED_FROM`]).
    pub prefers: Option<String>,
}

/// The annotation of a function a board ran before it was in a cluster, imported into the
/// cluster's state: that board's name ([`Function::prefers`]).
pub const IMPORTED_FROM: &str = "com.bramble.cluster.imported-from";

/// Why a deployment cannot be turned into a [`Function`] (an API answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FunctionError {
    /// A `constraints` entry that parses to nothing.
    #[error(transparent)]
    Constraint(#[from] ConstraintError),
    /// A hardware annotation that does not parse.
    #[error(transparent)]
    Grant(#[from] GrantError),
    /// `limits.memory` that is not a quantity.
    #[error("limits.memory: {0}")]
    Memory(String),
}

/// The hardware a deployment's annotations grant its function: `bramble.gpio` and the other
/// grants, and what its triggers imply (a GPIO trigger grants its line as an input). The node
/// knows the triggers' annotations; [`grants::parse`] alone reads the grants only.
pub type HardwareOf = fn(&BTreeMap<String, String>) -> Result<Option<Grants>, GrantError>;

/// How the node reads a deployment for placing.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    /// What a function without a memory limit reserves (the node default; `None`: nothing).
    pub default_memory: Option<u64>,
    /// The hardware it is granted.
    pub hardware_of: HardwareOf,
}

impl Reading {
    /// Grants only (no trigger annotations known), with `default_memory`.
    pub fn grants_only(default_memory: Option<u64>) -> Reading {
        Reading {
            default_memory,
            hardware_of: grants::parse,
        }
    }
}

impl Function {
    /// A function from its deployment: constraints, hardware ([`Reading::hardware_of`] its
    /// annotations) and memory limit (`limits.memory`, else the reading's default, else 0).
    pub fn from_deployment(
        key: FunctionKey,
        replicas: u32,
        deployment: &FunctionDeployment,
        reading: Reading,
        platforms: Option<Vec<Platform>>,
    ) -> Result<Function, FunctionError> {
        let constraints = parse_constraints(&deployment.constraints)?;
        let hardware = (reading.hardware_of)(&deployment.annotations)?;
        let limit = deployment
            .limits
            .as_ref()
            .and_then(|l| l.memory.as_deref())
            .filter(|q| !q.is_empty());
        let memory = match limit {
            Some(q) => bramble_gateway::validate::parse_memory(q).map_err(FunctionError::Memory)?,
            None => reading.default_memory.unwrap_or(0),
        };
        Ok(Function {
            key,
            replicas,
            memory,
            platforms,
            hardware,
            constraints,
            prefers: deployment.annotations.get(IMPORTED_FROM).cloned(),
        })
    }

    /// Memory it reserves in all: one replica's even when scaled to zero.
    pub fn reservation(&self) -> u64 {
        self.memory.saturating_mul(u64::from(self.replicas.max(1)))
    }

    /// Whether `board` qualifies whatever its state and load: constraints, platform, hardware.
    pub fn fits_board(&self, board: &Board) -> bool {
        self.constraints.iter().all(|c| c.matches(board))
            && !board.outside.contains(&self.key)
            && board.runs(self.platforms.as_deref())
            && self
                .hardware
                .as_ref()
                .is_none_or(|g| board.lacks(g).is_none())
    }
}
