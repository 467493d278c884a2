import time, torch
torch.set_num_threads(1)
from collapsekit.data import load_split
from collapsekit.data.phantom import PhantomConfig
t=time.time()
pc = PhantomConfig(cases=52, size=128, slices=48, validation=8)
tr = load_split('phantom', split='training', phantom=pc, cache_dir='/tmp/ck_cache')
va = load_split('phantom', split='validation', phantom=pc, cache_dir='/tmp/ck_cache')
print(len(tr), sum(len(v.slices) for v in tr), len(va), sum(len(v.slices) for v in va), time.time()-t)
