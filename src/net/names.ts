/** Agent and network names: DNS labels (lowercase letters, digits, inner hyphens, at most 63). */
export const NAME_PATTERN = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
export const NETWORK_PATTERN = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
