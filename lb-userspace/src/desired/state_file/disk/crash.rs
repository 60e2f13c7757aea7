//! A disk in memory that fails, or dies, at a chosen step, and every way
//! what it held can come back after the death: data not yet synced may be
//! lost, torn or zeroed, and of the changes to names since the last
//! directory sync any prefix may have reached the disk (journalling file
//! systems commit metadata in order; none, some or all are enumerated).

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    io,
    path::{Path, PathBuf},
};

use super::Disk;

/// What happens at the chosen step.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// The machine dies before the step: neither it nor any later one
    /// happens, and lb cleans nothing up.
    Crash,
    /// The step fails with an I/O error, and lb carries on.
    Error,
}

/// A file's contents: as written, and as last synced.
#[derive(Clone, Debug, Default)]
struct Inode {
    data: Vec<u8>,
    synced: Vec<u8>,
}

impl Inode {
    /// What the disk may hold of it after a crash.
    fn survivors(&self) -> Vec<Vec<u8>> {
        if self.data == self.synced {
            return vec![self.data.clone()];
        }
        let torn = self.data[..self.data.len() / 2].to_vec();
        let zeroed = vec![0; self.data.len()];
        let mut all = vec![self.synced.clone(), self.data.clone(), torn, zeroed];
        all.dedup();
        all
    }
}

/// A change to the directory's names.
#[derive(Clone, Debug)]
enum Change {
    Link(PathBuf, usize),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf),
}

impl Change {
    fn apply(&self, names: &mut BTreeMap<PathBuf, usize>) {
        match self {
            Self::Link(path, inode) => {
                names.insert(path.clone(), *inode);
            }
            Self::Unlink(path) => {
                names.remove(path);
            }
            Self::Rename(from, to) => {
                if let Some(inode) = names.remove(from) {
                    names.insert(to.clone(), inode);
                }
            }
        }
    }
}

/// Everything the disk holds, in memory and on the platter.
#[derive(Clone, Debug, Default)]
pub struct Image {
    inodes: Vec<Inode>,
    /// The names as lb sees them.
    names: BTreeMap<PathBuf, usize>,
    /// The names as of the last directory sync.
    durable: BTreeMap<PathBuf, usize>,
    /// Changes to names since the last directory sync, in order.
    changes: Vec<Change>,
}

impl Image {
    /// An image holding `bytes` at `path`, all of it on the disk.
    pub fn with(mut self, path: &Path, bytes: &[u8]) -> Self {
        let inode = self.inodes.len();
        self.inodes.push(Inode {
            data: bytes.to_vec(),
            synced: bytes.to_vec(),
        });
        self.names.insert(path.to_owned(), inode);
        self.durable = self.names.clone();
        self
    }

    /// The file at `path`, as lb would read it.
    pub fn contents(&self, path: &Path) -> Option<&[u8]> {
        self.names.get(path).map(|&i| &self.inodes[i].data[..])
    }

    /// Every name in it.
    pub fn names(&self) -> impl Iterator<Item = &Path> {
        self.names.keys().map(PathBuf::as_path)
    }

    /// Every image the machine can come back with if it dies now.
    pub fn after_crash(&self) -> Vec<Image> {
        (0..=self.changes.len())
            .flat_map(|kept| {
                let mut names = self.durable.clone();
                self.changes[..kept]
                    .iter()
                    .for_each(|c| c.apply(&mut names));
                self.with_contents(names)
            })
            .collect()
    }

    /// Every image with `names` and each file's contents one of those it
    /// can come back with.
    fn with_contents(&self, names: BTreeMap<PathBuf, usize>) -> Vec<Image> {
        let mut images = vec![Image {
            inodes: self.inodes.clone(),
            durable: names.clone(),
            names,
            changes: Vec::new(),
        }];
        let named: BTreeSet<usize> = images[0].names.values().copied().collect();
        for inode in named {
            images = images
                .into_iter()
                .flat_map(|image| {
                    self.inodes[inode].survivors().into_iter().map(move |data| {
                        let mut image = image.clone();
                        image.inodes[inode] = Inode {
                            synced: data.clone(),
                            data,
                        };
                        image
                    })
                })
                .collect();
        }
        images
    }
}

/// A disk that runs `fault` at step `at` (counting every call from 0).
pub struct CrashDisk {
    image: RefCell<Image>,
    steps: Cell<usize>,
    fault: Option<(usize, Fault)>,
    dead: Cell<bool>,
}

impl CrashDisk {
    /// A disk holding `image` that never fails.
    pub fn new(image: Image) -> Self {
        Self {
            image: RefCell::new(image),
            steps: Cell::new(0),
            fault: None,
            dead: Cell::new(false),
        }
    }

    /// A disk holding `image` that runs `fault` at step `at`.
    pub fn failing(image: Image, at: usize, fault: Fault) -> Self {
        Self {
            fault: Some((at, fault)),
            ..Self::new(image)
        }
    }

    /// How many steps were taken (or refused once dead).
    pub fn steps(&self) -> usize {
        self.steps.get()
    }

    /// Whether the machine died.
    pub fn dead(&self) -> bool {
        self.dead.get()
    }

    /// What it holds now.
    pub fn image(&self) -> Image {
        self.image.borrow().clone()
    }

    fn step(&self) -> io::Result<()> {
        if self.dead.get() {
            return Err(io::Error::other("the machine is dead"));
        }
        let step = self.steps.replace(self.steps.get() + 1);
        match self.fault {
            Some((at, Fault::Crash)) if at == step => {
                self.dead.set(true);
                Err(io::Error::other("the machine died"))
            }
            Some((at, Fault::Error)) if at == step => Err(io::Error::other("injected I/O error")),
            _ => Ok(()),
        }
    }

    fn inode_at(image: &Image, path: &Path) -> io::Result<usize> {
        image
            .names
            .get(path)
            .copied()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
}

impl Disk for CrashDisk {
    type Written = usize;

    fn create_dir(&self, _dir: &Path) -> io::Result<()> {
        self.step()
    }

    fn write_new(&self, path: &Path, bytes: &[u8]) -> io::Result<usize> {
        self.step()?;
        let image = &mut *self.image.borrow_mut();
        if image.names.contains_key(path) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let inode = image.inodes.len();
        image.inodes.push(Inode {
            data: bytes.to_vec(),
            synced: Vec::new(),
        });
        let link = Change::Link(path.to_owned(), inode);
        link.apply(&mut image.names);
        image.changes.push(link);
        Ok(inode)
    }

    fn sync(&self, inode: usize) -> io::Result<()> {
        self.step()?;
        let file = &mut self.image.borrow_mut().inodes[inode];
        file.synced = file.data.clone();
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.step()?;
        let image = &mut *self.image.borrow_mut();
        Self::inode_at(image, from)?;
        let rename = Change::Rename(from.to_owned(), to.to_owned());
        rename.apply(&mut image.names);
        image.changes.push(rename);
        Ok(())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        self.step()?;
        let image = &mut *self.image.borrow_mut();
        image.durable = image.names.clone();
        image.changes.clear();
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.step()?;
        let image = &mut *self.image.borrow_mut();
        Self::inode_at(image, path)?;
        let unlink = Change::Unlink(path.to_owned());
        unlink.apply(&mut image.names);
        image.changes.push(unlink);
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        self.step()?;
        let image = self.image.borrow();
        Ok(image
            .names()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name().map(ToOwned::to_owned))
            .collect())
    }

    fn read(&self, path: &Path) -> io::Result<String> {
        self.step()?;
        let image = self.image.borrow();
        let inode = Self::inode_at(&image, path)?;
        String::from_utf8(image.inodes[inode].data.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}
