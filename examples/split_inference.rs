//! Cut MobileNetV2 at one split point and run the two halves, as a device and a cloud
//! worker would: `cargo run --release --example split_inference -- [SPLIT] [IMAGE]`.
use anyhow::Context;
use dyno::check::max_abs_diff;
use dyno::data;
use dyno::home::Home;
use dyno::model::zoo;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let split: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()
        .context("SPLIT must be a number")?
        .unwrap_or(8);
    let home = Home::discover();
    let image = match args.next() {
        Some(p) => p.into(),
        None => data::list_images(&home.imagenet_dir())?.remove(0).path,
    };
    let model = zoo::load("mobilenet_v2", &home)?;
    let x = data::load_image(&image, model.input())?.unsqueeze(0);

    let activation = model.head(&x, split)?; // on the device
    let logits = model.tail(&activation, split)?; // in the cloud
    let sp = &model.split_points()?[split];
    println!(
        "{}: split {split} (after {}), {} activation of {:?} = {} bytes in fp32 (the input is {} bytes)",
        image.display(),
        sp.after_block.as_deref().unwrap_or("nothing: cloud-only"),
        model.name(),
        sp.shape,
        sp.fp32_bytes,
        model.split_points()?[0].fp32_bytes,
    );
    let top1 = logits.argmax(-1, false).int64_value(&[0]);
    let diff = max_abs_diff(&logits, &model.forward(&x)?);
    println!("top-1 class {top1}; head+tail differs from the full forward by {diff:.3e}");
    Ok(())
}
