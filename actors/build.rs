//! Give every binary, test and bench an rpath to libtorch, so that they start without
//! LD_LIBRARY_PATH. torch-sys (`links = "tch"`) exports its library folder to
//! direct dependents as DEP_TCH_LIBTORCH_LIB.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
