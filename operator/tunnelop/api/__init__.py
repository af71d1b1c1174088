"""The tunnelop API: typed models of the custom resources and the CRDs generated from them."""
