"""The store: everything fastpix keeps on disk about a run, and reading it back (a fastpix run or a reference one).

<checkpoints_dir>/<name>/
  latest_net_G.safetensors, latest_net_D.safetensors   weights (+ <epoch>_net_{G,D}, iter_<N>_net_{G,D})
  latest_train_state.pt   optimizers, RNG, epoch, iteration; torch.load(weights_only=True) reads it
  checkpoint.json         the manifest of the newest complete save: its iteration, each file's size and hash
  config.json             the model/data/train configuration of the run
  metrics.jsonl           one JSON line per logged iteration
  .lock                   held (flock) by the one `fastpix train` writing the folder
A reference checkpoint (<epoch>_net_G.pth, a plain state_dict) is read wherever a fastpix one is.

One job per module, lowest first:
  run_config      config.json (and the JSON reading the store shares)
  checkpoint_set  a save as a transaction: temporaries, the manifest that commits them, recovery, verification
  weights         weight and train-state formats (safetensors, the reference's .pth), the strict load
  run_folder      the run folder: its layout, lock, metrics log, and writing/loading a whole set
  snapshot        what a save needs, copied off the live tensors (the training thread's only part of a save)
  checkpoint_writer  the background thread that writes a snapshot as a set, one save in flight at a time
  architecture    what a generator's state_dict tells of its architecture; building that generator
  generator       where the generator of a run folder or weights file is, and loading it
  user_networks   TorchScript networks the user supplies (FID features, the FCN-score segmenter)
The store knows no training loop: the loop hands it the networks and a train state to save.
"""
