"""The network (`net.StackedRNN`, a plain nn.Module) and its training (`module.EchoLSTM`, a LightningModule)."""
