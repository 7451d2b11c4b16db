//! CUDA devices through cudarc's driver API (the `cuda` feature). The driver library is loaded at
//! run time, so this builds and runs without a GPU: there it reports that no driver is present
//! instead of panicking (cudarc panics when libcuda is missing, so every entry point checks first).

use cudarc::driver::CudaContext;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver (libcuda) on this machine")]
    NoDriver,
    #[error("CUDA device {index} does not exist ({count} found)")]
    NoSuchDevice { index: usize, count: usize },
    #[error("CUDA driver call failed: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
}

/// One device as the driver describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaDeviceInfo {
    pub index: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_memory: usize,
}

/// Whether libcuda can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: `is_culib_present` only tries to dlopen the driver library and reports whether that
    // worked; it touches no CUDA state.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Every CUDA device on this machine.
pub fn devices() -> Result<Vec<CudaDeviceInfo>, CudaError> {
    if !driver_present() {
        return Err(CudaError::NoDriver);
    }
    let count = usize::try_from(CudaContext::device_count()?).unwrap_or(0);
    (0..count).map(device).collect()
}

/// Device `index`, with a context created on it.
pub fn device(index: usize) -> Result<CudaDeviceInfo, CudaError> {
    if !driver_present() {
        return Err(CudaError::NoDriver);
    }
    let count = usize::try_from(CudaContext::device_count()?).unwrap_or(0);
    if index >= count {
        return Err(CudaError::NoSuchDevice { index, count });
    }
    let ctx = CudaContext::new(index)?;
    Ok(CudaDeviceInfo {
        index,
        name: ctx.name()?,
        compute_capability: ctx.compute_capability()?,
        total_memory: ctx.total_mem()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set on machines with an NVIDIA GPU and driver.
    fn gpu_machine() -> bool {
        std::env::var("ARMATURE_GPU_TESTS").is_ok_and(|v| v == "1")
    }

    #[test]
    fn discovery_matches_the_machine() {
        match devices() {
            Ok(found) => {
                assert!(driver_present());
                if gpu_machine() {
                    assert!(!found.is_empty(), "ARMATURE_GPU_TESTS=1 but no device");
                    for d in &found {
                        assert!(!d.name.is_empty() && d.total_memory > 0 && d.compute_capability.0 >= 5, "{d:?}");
                        println!(
                            "cuda:{} {} sm_{}{} {} MiB",
                            d.index,
                            d.name,
                            d.compute_capability.0,
                            d.compute_capability.1,
                            d.total_memory >> 20
                        );
                    }
                }
                let missing = found.len();
                assert!(
                    matches!(device(missing), Err(CudaError::NoSuchDevice { index, count }) if index == missing && count == missing)
                );
            }
            Err(e) => {
                assert!(!gpu_machine(), "ARMATURE_GPU_TESTS=1 but discovery failed: {e}");
                assert!(matches!(e, CudaError::NoDriver), "{e}");
                assert!(matches!(device(0), Err(CudaError::NoDriver)));
            }
        }
    }
}
