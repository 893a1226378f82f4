//! How much a stronger lossless stage could add to `fashion_cnn`'s packed activations:
//! for the (split, bits) rows within a point of the fp32 accuracy (docs/PACKING.md), the
//! mean packed bytes of 500 test images with LZ4, zstd at levels 1 (what dyno uses), 3,
//! 9 and 19, and the order-0 entropy of the codes (the floor of any coder that takes
//! codes one at a time), each with the header, against fp32 at that split.
//!
//! Run: `cargo run --release --example lossless_headroom`
use anyhow::Context;
use dyno::check;
use dyno::home::Home;
use dyno::model::zoo;
use dyno::pack::quant::{quantise, range_of};
use dyno::pack::shuffle::{plane_len, shuffle};
use dyno::pack::tensor::tensor_values;
use dyno::pack::{pack, Codec, PackOptions, Precision, TensorId};

const ITEMS: i64 = 500;
/// (split, bits): the fewest bits within a point at splits 1 to 4 (min/max ranges), then
/// the 4-bit rows at splits 1 and 2, a point or more lost.
const ROWS: [(usize, u32); 6] = [(1, 5), (2, 5), (3, 4), (4, 3), (1, 4), (2, 4)];
const ZSTD_LEVELS: [i32; 4] = [1, 3, 9, 19];

fn main() -> anyhow::Result<()> {
    let home = Home::discover();
    let model = zoo::load("fashion_cnn", &home).context("run scripts/setup.sh first")?;
    let inputs = check::default_inputs(&model, &home)?;
    let xs = inputs.xs.narrow(0, 0, ITEMS);
    println!("`fashion_cnn`, the first {ITEMS} test images; bytes per activation, header included, and the reduction against fp32\n");
    print!("| split | bits | fp32 bytes | header | lz4 |");
    for l in ZSTD_LEVELS {
        print!(" zstd {l} |");
    }
    println!(
        " order-0 entropy |\n|---|---|---|---|---|{}---|",
        "---|".repeat(4)
    );
    for (split, bits) in ROWS {
        let (values, shape) = tensor_values(&model.head(&xs, split)?)?;
        let per = values.len() / shape[0];
        let mut item_shape = shape.clone();
        item_shape[0] = 1;
        let id = TensorId {
            model: model.name(),
            weights_hash: model.weights_hash(),
            split: split as u16,
        };
        let raw = bits as usize * plane_len(per);
        let opts = PackOptions::new(Precision::Bits(bits as u8), Codec::None);
        let header = pack(&values[..per], &item_shape, &id, &opts)?.len() - raw;
        let (mut lz4, mut zstd, mut entropy) = (0usize, [0usize; 4], 0f64);
        let mut codes = vec![0u16; per];
        let mut planes = vec![0u8; raw];
        for v in values.chunks(per) {
            let r = range_of(v).map_err(|i| anyhow::anyhow!("element {i} is not finite"))?;
            quantise(v, r, bits, &mut codes);
            let mut hist = vec![0usize; 1 << bits];
            for &c in &codes {
                hist[c as usize] += 1;
            }
            entropy += hist
                .iter()
                .filter(|&&h| h > 0)
                .map(|&h| -(h as f64) * (h as f64 / per as f64).log2())
                .sum::<f64>()
                / 8.0;
            shuffle(&codes, bits, &mut planes);
            lz4 += lz4_flex::block::compress(&planes).len();
            for (z, level) in zstd.iter_mut().zip(ZSTD_LEVELS) {
                *z += zstd::bulk::compress(&planes, level)?.len();
            }
        }
        let fp32 = 4 * per;
        let cell = |payload: f64| {
            let bytes = payload / ITEMS as f64 + header as f64;
            format!("{bytes:.0} ({:.1}x)", fp32 as f64 / bytes)
        };
        print!(
            "| {split} | {bits} | {fp32} | {header} | {} |",
            cell(lz4 as f64)
        );
        for z in zstd {
            print!(" {} |", cell(z as f64));
        }
        println!(" {} |", cell(entropy));
    }
    Ok(())
}
