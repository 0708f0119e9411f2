//! Numeric precision of the backbone at inference: `--precision
//! fp32|bf16|auto`.
//!
//! `bf16` is mixed precision, as PyTorch's autocast does it: the matrix
//! products (every linear layer and attention) run on bfloat16 copies of
//! the weights and activations, while embeddings, LayerNorm, the residual
//! sums, the projection head and the final L2 normalisation stay f32; the
//! vectors that come out are f32 and unit length either way. It pays where
//! the hardware multiplies bfloat16 natively (AVX-512 BF16 or AMX on x86,
//! any recent CUDA GPU); on a CPU without them libtorch emulates it and is
//! several times *slower* than f32, which is why `auto` checks.

use std::fmt;
use std::str::FromStr;

use tch::Device;

/// What the backbone computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The user's request, as given to `--precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrecisionChoice {
    Fp32,
    Bf16,
    /// bf16 on CUDA and on CPUs with native bfloat16 products
    /// ([`cpu_has_native_bf16`]), fp32 otherwise.
    #[default]
    Auto,
}

impl FromStr for PrecisionChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" => Ok(Self::Fp32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "auto" => Ok(Self::Auto),
            other => Err(format!(
                "unknown precision {other:?} (expected fp32, bf16 or auto)"
            )),
        }
    }
}

impl From<Precision> for PrecisionChoice {
    fn from(p: Precision) -> Self {
        match p {
            Precision::Fp32 => Self::Fp32,
            Precision::Bf16 => Self::Bf16,
        }
    }
}

impl PrecisionChoice {
    /// Resolves the request for a model on `device`.
    pub fn resolve(self, device: Device) -> Precision {
        match self {
            Self::Fp32 => Precision::Fp32,
            Self::Bf16 => Precision::Bf16,
            Self::Auto if device.is_cuda() || cpu_has_native_bf16() => Precision::Bf16,
            Self::Auto => Precision::Fp32,
        }
    }
}

/// Whether this CPU multiplies bfloat16 natively: AVX-512 BF16 or AMX-BF16
/// (read from `/proc/cpuinfo` on Linux, as libtorch's oneDNN would use
/// them). `TESSERA_NO_BF16` set forces false. Checked once.
pub fn cpu_has_native_bf16() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        if std::env::var_os("TESSERA_NO_BF16").is_some() {
            return false;
        }
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
            return false;
        };
        info.lines()
            .find(|l| l.starts_with("flags"))
            .is_some_and(|l| {
                l.split_whitespace()
                    .any(|f| f == "avx512_bf16" || f == "amx_bf16")
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves() {
        assert_eq!("BF16".parse(), Ok(PrecisionChoice::Bf16));
        assert_eq!("fp32".parse(), Ok(PrecisionChoice::Fp32));
        assert!("fp8"
            .parse::<PrecisionChoice>()
            .unwrap_err()
            .contains("fp32, bf16 or auto"));
        assert_eq!(PrecisionChoice::Bf16.resolve(Device::Cpu), Precision::Bf16);
        assert_eq!(
            PrecisionChoice::Fp32.resolve(Device::Cuda(0)),
            Precision::Fp32
        );
        assert_eq!(
            PrecisionChoice::Auto.resolve(Device::Cuda(0)),
            Precision::Bf16
        );
        let cpu = PrecisionChoice::Auto.resolve(Device::Cpu);
        assert_eq!(cpu == Precision::Bf16, cpu_has_native_bf16());
    }
}
