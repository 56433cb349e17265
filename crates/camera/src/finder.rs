//! Where a frame may hold QR codes, found before the full decoder runs: a
//! row scan for finder patterns (what every QR decoder looks for first, and
//! what must be there for any code to be read), and the part of the frame
//! the codes behind them can cover.
//!
//! The full decoder spends most of its time on work proportional to the
//! frame's area (binarizing it whole, then scanning the bits for finder
//! patterns). A camera watches an empty lane most of the day, and a code
//! held up to it covers a fraction of the frame: this scan costs a fraction
//! of that work, skips the decoder on a frame without a finder pattern, and
//! hands it only the region around the ones it found.

use crate::Frame;

/// Each pixel is compared with the mean of the pixels within this distance
/// on its row (a local threshold, as lighting varies across a frame).
const WINDOW_RADIUS: usize = 16;
/// How far from that mean a pixel must be to flip from light to dark or
/// back: sensor noise in a flat area must not draw stripes.
const FLIP_MARGIN: u32 = 16;

/// A pixel against its neighbourhood: clearly darker, clearly lighter, or
/// too close to say (the run it is in goes on).
const DARK: u8 = 1;
const LIGHT: u8 = 2;

/// A finder-pattern crossing that lined up with one on the row above: the
/// centre of its middle dark run and the module size its runs give.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Crossing {
    pub x: f32,
    pub y: f32,
    pub module: f32,
}

/// Every row's runs of dark and light in the 1:1:3:1:1 proportions of a
/// finder pattern that line up with such runs on the row above (a finder
/// pattern is 7 modules tall, so it crosses several rows, while noise
/// rarely lines up twice). Every row is scanned: the rows through a finder
/// pattern's 3-module centre are as few as 3 when a module is a pixel.
/// Lenient on purpose: a false crossing only costs a decode.
pub(crate) fn crossings(frame: &Frame) -> Vec<Crossing> {
    let (width, height) = (frame.width as usize, frame.height as usize);
    let mut found = Vec::new();
    if width == 0 || frame.luma.len() != width * height {
        return found;
    }
    let mut prefix = vec![0u32; width + 1];
    let mut class = vec![0u8; width];
    // Finder-like crossings (centre, module size) on the previous row and this one.
    let mut previous: Vec<(f32, f32)> = Vec::new();
    let mut current: Vec<(f32, f32)> = Vec::new();
    for (y, row) in frame.luma.chunks_exact(width).enumerate() {
        classify(row, &mut prefix, &mut class);
        // The last five runs, oldest first, and how many runs have ended.
        let mut runs = [0u32; 5];
        let mut ended = 0usize;
        let mut dark = false;
        let mut start = 0usize;
        // Runs end where a pixel is clearly of the other colour: looked for
        // eight pixels at a time, rather than pixel by pixel.
        while let Some(x) = next_of(&class, start + usize::from(ended > 0), if dark { LIGHT } else { DARK }) {
            runs.rotate_left(1);
            runs[4] = (x - start) as u32;
            ended += 1;
            // A dark run just ended: the last five are dark, light, dark, light, dark.
            if dark && ended >= 5 && finder_proportions(&runs) {
                let module = runs.iter().sum::<u32>() as f32 / 7.0;
                let centre = x as f32 - (runs[4] + runs[3]) as f32 - runs[2] as f32 / 2.0;
                let lined_up = previous
                    .iter()
                    .any(|&(c, m)| (c - centre).abs() <= 1.5 * m.max(module) && m <= 2.0 * module && module <= 2.0 * m);
                if lined_up {
                    found.push(Crossing { x: centre, y: y as f32, module });
                }
                current.push((centre, module));
            }
            dark = !dark;
            start = x;
        }
        std::mem::swap(&mut previous, &mut current);
        current.clear();
    }
    found
}

/// The first of `class` at or after `from` that equals `wanted`.
fn next_of(class: &[u8], from: usize, wanted: u8) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let rest = class.get(from..)?;
    let pattern = u64::from(wanted) * ONES;
    let mut chunks = rest.chunks_exact(8);
    let mut at = from;
    for chunk in &mut chunks {
        // A byte of `word` is zero where `class` is `wanted`; the lowest
        // flagged byte is the first zero one (flags above it may be false).
        let word = <[u8; 8]>::try_from(chunk).map_or(!0, u64::from_le_bytes) ^ pattern;
        let zero = word.wrapping_sub(ONES) & !word & HIGHS;
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks.remainder().iter().position(|&c| c == wanted).map(|i| at + i)
}

/// Each pixel of `row` as [`DARK`], [`LIGHT`] or 0 against the mean of its
/// window, using `prefix` (running sums) as scratch. The middle of the row,
/// where the window is whole, is written so that the compiler vectorises it.
fn classify(row: &[u8], prefix: &mut [u32], class: &mut [u8]) {
    let width = row.len();
    let mut sum = 0u32;
    prefix[0] = 0;
    for (p, &v) in prefix[1..].iter_mut().zip(row) {
        sum += u32::from(v);
        *p = sum;
    }
    // p against the window's mean, both scaled by its length: no division.
    let judge = |p: u8, n: u32, window: u32| {
        let (p, margin) = (u32::from(p) * n, FLIP_MARGIN * n);
        (u8::from(p + margin < window) * DARK) | (u8::from(p > window + margin) * LIGHT)
    };
    let r = WINDOW_RADIUS;
    if width > 2 * r {
        let n = (2 * r + 1) as u32;
        let inner = width - 2 * r;
        let (lows, highs) = (&prefix[..inner], &prefix[2 * r + 1..]);
        for (((c, &p), &low), &high) in class[r..width - r].iter_mut().zip(&row[r..width - r]).zip(lows).zip(highs) {
            *c = judge(p, n, high - low);
        }
    }
    // Near the ends the window is cut short.
    let edges = (0..r.min(width)).chain(r.max(width.saturating_sub(r))..width);
    for x in edges {
        let (from, to) = (x.saturating_sub(r), (x + r + 1).min(width));
        class[x] = judge(row[x], (to - from) as u32, prefix[to] - prefix[from]);
    }
}

/// 1:1:3:1:1 within generous bounds (a blurred, tilted or perspective code
/// stretches the runs).
fn finder_proportions(runs: &[u32; 5]) -> bool {
    let total: u32 = runs.iter().sum();
    if total < 7 {
        return false;
    }
    let module = total as f32 / 7.0;
    let near = |run: u32, modules: f32| (run as f32 - modules * module).abs() <= 0.75 * modules * module;
    near(runs[0], 1.0) && near(runs[1], 1.0) && near(runs[2], 3.0) && near(runs[3], 1.0) && near(runs[4], 1.0)
}

/// A rectangle of a frame, in pixels, and the smallest module size worth
/// looking for in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region {
    pub left: u32,
    pub top: u32,
    pub width: u32,
    pub height: u32,
    pub min_module: u32,
}

impl Region {
    /// All of a frame, codes of any module size.
    pub fn whole(width: u32, height: u32) -> Region {
        Region { left: 0, top: 0, width, height, min_module: 0 }
    }
}

/// More crossings or finder patterns than these and the frame is busy (a
/// textured scene): the whole frame is decoded.
const MAX_CROSSINGS: usize = 4096;
const MAX_FINDERS: usize = 24;
/// Around a finder pattern's centre, a code reaches 3.5 modules to the
/// pattern's edge and the decoder wants the 4-module quiet zone beyond it;
/// the rest is slack for perspective and for module sizes measured on a
/// slant.
const MARGIN_MODULES: f32 = 12.0;
/// The smallest region side worth cutting: the decoder's binarizer needs
/// blocks of 8 pixels with neighbours, and a small cut saves little.
const MIN_SIDE: f32 = 96.0;

/// The part of a `width` x `height` frame that holds every code whose
/// finder patterns the crossings belong to, or `None` when that is most of
/// the frame anyway (or the crossings are too many to say).
///
/// Crossings are grouped into finder patterns: a real one is crossed on
/// about 3 rows per module (its centre is 3 modules tall), where the same
/// proportions inside a code's data line up on a row or two. A code is
/// three finder patterns at three corners; its fourth corner, with no
/// pattern, lies opposite the one where the other two meet at about a right
/// angle. The region is the bounding box of every crossing and of each such
/// fourth corner, widened by the quiet zone and some slack.
pub(crate) fn region(crossings: &[Crossing], width: u32, height: u32) -> Option<Region> {
    if crossings.len() > MAX_CROSSINGS {
        return None;
    }
    let finders = finder_patterns(crossings);
    if finders.is_empty() || finders.len() > MAX_FINDERS {
        return None;
    }
    // The median: runs inside a code's data that happen to have finder
    // proportions span whole modules, so they overstate the size, never
    // understate it, and the real finder patterns are at least three.
    let mut modules: Vec<f32> = finders.iter().map(|f| f.module).collect();
    modules.sort_by(f32::total_cmp);
    let module = modules[modules.len() / 2];
    let corners: Vec<&Crossing> =
        finders.iter().filter(|f| f.module <= 1.5 * module && f.module >= module / 1.5).collect();
    let mut points: Vec<(f32, f32)> = crossings.iter().map(|c| (c.x, c.y)).collect();
    for (i, a) in corners.iter().enumerate() {
        for (j, b) in corners.iter().enumerate().skip(i + 1) {
            for c in corners.iter().skip(j + 1) {
                if let Some(corner) = fourth_corner([a, b, c]) {
                    points.push(corner);
                }
            }
        }
    }
    let margin = MARGIN_MODULES * module;
    let (mut left, mut top, mut right, mut bottom) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    for (x, y) in points {
        left = left.min(x - margin);
        top = top.min(y - margin);
        right = right.max(x + margin);
        bottom = bottom.max(y + margin);
    }
    // At least MIN_SIDE wide and tall, around the same centre.
    for (low, high) in [(&mut left, &mut right), (&mut top, &mut bottom)] {
        let short = MIN_SIDE - (*high - *low);
        if short > 0.0 {
            *low -= short / 2.0;
            *high += short / 2.0;
        }
    }
    let clamp = |v: f32, max: u32| v.clamp(0.0, max as f32) as u32;
    let (left, top) = (clamp(left.floor(), width), clamp(top.floor(), height));
    let (right, bottom) = (clamp(right.ceil(), width), clamp(bottom.ceil(), height));
    // Half the module size the finder patterns showed: the decoder then
    // skips rows accordingly and ignores the smaller dark-light specks of
    // sensor noise (it looks for nothing below 1 pixel otherwise).
    let min_module = (module / 2.0).floor() as u32;
    let cut = Region { left, top, width: right.saturating_sub(left), height: bottom.saturating_sub(top), min_module };
    // Worth it only when it leaves out a good part of the frame.
    let kept = u64::from(cut.width) * u64::from(cut.height);
    (kept * 10 <= u64::from(width) * u64::from(height) * 6 && cut.width > 0 && cut.height > 0).then_some(cut)
}

/// Crossings grouped by place (rows close together, centres close), each
/// group that spans enough rows for a finder pattern's centre as one
/// pattern: mean centre, largest module.
fn finder_patterns(crossings: &[Crossing]) -> Vec<Crossing> {
    struct Group {
        sum_x: f32,
        sum_y: f32,
        count: f32,
        module: f32,
        last: Crossing,
    }
    let mut groups: Vec<Group> = Vec::new();
    for c in crossings {
        let near = groups.iter_mut().rev().find(|g| {
            let reach = 2.0 * g.module.max(c.module);
            c.y - g.last.y <= reach.max(2.0) && (c.x - g.last.x).abs() <= reach
        });
        match near {
            Some(g) => {
                g.sum_x += c.x;
                g.sum_y += c.y;
                g.count += 1.0;
                g.module = g.module.max(c.module);
                g.last = *c;
            }
            None => groups.push(Group { sum_x: c.x, sum_y: c.y, count: 1.0, module: c.module, last: *c }),
        }
    }
    groups
        .into_iter()
        .filter(|g| g.count >= (2.0 * g.module).max(2.0))
        .map(|g| Crossing { x: g.sum_x / g.count, y: g.sum_y / g.count, module: g.module })
        .collect()
}

/// Three finder patterns of one code: the corner opposite the one where the
/// other two meet at about a right angle, at about the same distance; `None`
/// when no corner of the three looks like that.
fn fourth_corner(three: [&Crossing; 3]) -> Option<(f32, f32)> {
    for k in 0..3 {
        let (a, b, c) = (three[k], three[(k + 1) % 3], three[(k + 2) % 3]);
        let (ux, uy, vx, vy) = (b.x - a.x, b.y - a.y, c.x - a.x, c.y - a.y);
        let (lu, lv) = ((ux * ux + uy * uy).sqrt(), (vx * vx + vy * vy).sqrt());
        if lu < 7.0 * a.module || lv < 7.0 * a.module || lu > 2.0 * lv || lv > 2.0 * lu {
            continue;
        }
        let cos = (ux * vx + uy * vy) / (lu * lv);
        if cos.abs() < 0.5 {
            return Some((b.x + c.x - a.x, b.y + c.y - a.y));
        }
    }
    None
}
