//! Choosing where the model runs: `cpu`, `cuda` or `auto`.

use std::str::FromStr;

use tch::Device;

use crate::error::{ModelError, Result};

/// The user's device request, as given to `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    Cpu,
    Cuda,
    /// CUDA when `tch::Cuda::is_available()`, else CPU.
    #[default]
    Auto,
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda),
            "auto" => Ok(Self::Auto),
            other => Err(format!(
                "unknown device {other:?} (expected cpu, cuda or auto)"
            )),
        }
    }
}

impl DeviceChoice {
    /// Resolves the request against this build and machine.
    pub fn resolve(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => Ok(Device::cuda_if_available()),
            Self::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
            Self::Cuda => Err(ModelError::Device(
                "CUDA was requested but is not available: build with TESSERA_CUDA=1 against a \
                 CUDA libtorch and run on a machine with an NVIDIA GPU, or use --device cpu"
                    .into(),
            )),
        }
    }
}

/// Sets libtorch's intra-op thread count (process-wide).
pub fn set_threads(n: usize) {
    tch::set_num_threads(n.max(1) as i32);
}

/// Human-readable device name.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves() {
        assert_eq!("CPU".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert!("tpu".parse::<DeviceChoice>().unwrap_err().contains("tpu"));
        assert_eq!(DeviceChoice::Cpu.resolve().unwrap(), Device::Cpu);
        let auto = DeviceChoice::Auto.resolve().unwrap();
        assert_eq!(auto == Device::Cpu, !tch::Cuda::is_available());
        if !tch::Cuda::is_available() {
            let e = DeviceChoice::Cuda.resolve().unwrap_err();
            assert!(e.to_string().contains("--device cpu"), "{e}");
        }
    }
}
