"""The network: layer lists (`architecture`), the Flax CPM (`cpm`), Caffe's max pool (`pooling`),
the loss (`losses`), shipped weights (`pretrained`) and descriptions (`summary`). Nothing here
knows of devices, platforms, training or data."""
