// Shared link set-up for every crate that produces executables linking libtorch
// (`training` for its tests, `engine` for the `tessera` binary). Included with
// `include!` from each crate's build.rs, because link arguments do not
// propagate from a library to its dependents.
//
// * rpath: `torch-sys` reports where libtorch lives (`DEP_TCH_LIBTORCH_LIB`);
//   we bake that directory into the executables so they run without
//   `LD_LIBRARY_PATH`.
// * CUDA: rustc links with `--as-needed`, which drops `libtorch_cuda.so`
//   because no symbol of it is referenced directly. Setting
//   `TESSERA_CUDA=1` at build time forces it in, so `tch::Cuda::is_available()`
//   sees the GPU when the libtorch is a CUDA build.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=TESSERA_CUDA");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    let cuda = std::env::var("TESSERA_CUDA").map(|v| v == "1" || v == "true");
    if cuda.unwrap_or(false) {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
